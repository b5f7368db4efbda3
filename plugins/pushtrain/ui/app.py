"""The FastAPI app the plugin mounts at ``/pushtrain`` in Airflow's API server: pages, their JSON, the webhook.

=========================================  ====================================================  ============
route                                      what                                                  access
=========================================  ====================================================  ============
``GET /pipelines``                         pipelines, newest first (HTML; ``/api/pipelines``)     read
``GET /pipelines/{pipeline_id}``           one pipeline: leaderboard, plots, diffs (HTML; JSON    read
                                           at ``/api/pipelines/{pipeline_id}``)
``GET /pipelines/{pipeline_id}/live``      the page's body again, for the page's polling script    read
``GET /runs/{dag_id}/{run_id}``            the pipeline of a DAG run (the ``dag_run`` tab)         read
``GET /registry``                          every model, its versions and aliases (HTML; JSON at   read
                                           ``/api/registry``)
``GET /static/{path}``                     stylesheet and polling script                          anyone
``POST /hooks/git``                        the signed git webhook (``webhook.py``)                signature
=========================================  ====================================================  ============

**Access.** Airflow does not authenticate a plugin's app for it (a mounted app inherits none of the API's
dependencies), so every page and JSON route asks the auth manager itself, exactly as Airflow's own routes do
(``requires_access_dag``): the user of the session cookie or bearer token must be allowed to read the runs of
``train_on_push`` and ``tweak_and_retrain``, and of the DAG in a ``/runs/{dag_id}/...`` URL. No session is a
401, a session without that permission a 403. The pages are what a user of those DAGs can already see in
their task logs, in one place.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import cache
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from pushtrain.ui import pages, records, webhook
from pushtrain.ui.records import PIPELINE_DAG_IDS, InvalidId, NotFound, PipelineView

SECURITY_HEADERS = {
    # Everything the pages use comes from this origin; the inline charts are SVG markup, not scripts.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
LIVE_HEADER = "X-Pushtrain-Live"


def _check_read(request: Request, user: Any, dag_ids: tuple[str, ...]) -> None:
    for dag_id in dag_ids:
        requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=dag_id)(request, user)


def pipeline_reader(request: Request, user: GetUserDep) -> Any:
    """The session's user, if the auth manager lets them read the runs of the pipeline DAGs (else 401/403)."""
    _check_read(request, user, PIPELINE_DAG_IDS)
    return user


def run_reader(request: Request, user: GetUserDep) -> Any:
    """As ``pipeline_reader``, and the user may also read the runs of the DAG named in the path."""
    _check_read(request, user, (*PIPELINE_DAG_IDS, request.path_params["dag_id"]))
    return user


Reader = Annotated[Any, Depends(pipeline_reader)]


def _html(
    request: Request, template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    return HTMLResponse(
        pages.render(request, template, **context),
        status_code=status,
        headers={**SECURITY_HEADERS, **(headers or {})},
    )


def _view(pipeline_id: str) -> PipelineView:
    try:
        return records.pipeline_view(pipeline_id)
    except InvalidId as exc:
        raise HTTPException(400, str(exc)) from None
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


def _webhook_config() -> webhook.WebhookConfig:
    from pushtrain import settings
    from pushtrain.ui import starter

    return webhook.WebhookConfig(
        webhook.configured_secret,
        webhook.watched_repositories,
        settings.default_branch,
        starter.start_training,
    )


def pipeline_json(view: PipelineView) -> dict[str, Any]:
    rows = []
    for row in view.rows:
        rows.append(
            {
                "attempt": row.attempt,
                "status": row.status,
                "detail": row.detail,
                "move": row.move,
                "dag_id": row.dag_id,
                "run_id": row.run_id,
                "record": row.record.model_dump(mode="json"),
                "epochs": [asdict(epoch) for epoch in row.epochs],
                "epochs_total": row.epochs_total,
            }
        )
    best = view.best
    return {
        "pipeline": view.run.model_dump(mode="json"),
        "state": view.state,
        "summary": view.summary.model_dump(mode="json") if view.summary else None,
        "best_attempt": best.attempt if best else None,
        "attempts": rows,
        "confusion": asdict(view.confusion) if view.confusion else None,
        "problems": view.problems,
    }


def create_app() -> FastAPI:
    app = FastAPI(
        title="pushtrain",
        summary="Pipeline and registry pages and the git webhook of pushtrain",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    app.include_router(webhook.make_router(_webhook_config))

    @app.exception_handler(HTTPException)
    async def page_errors(request: Request, exc: HTTPException) -> Response:
        """JSON for the API and the webhook; a small page for a person (in the Airflow UI's frame)."""
        if "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        titles = {401: "Log in to Airflow", 403: "Not allowed", 404: "Not found", 400: "Bad request"}
        link = {"href": pages.airflow_base(request), "text": "Airflow"} if exc.status_code == 401 else None
        return _html(
            request,
            "message.html",
            status=exc.status_code,
            title=titles.get(exc.status_code, "Error"),
            message=str(exc.detail),
            link=link,
            refresh=None,
        )

    @app.get("/pipelines", response_class=HTMLResponse, name="pipelines_page")
    async def pipelines_page(request: Request, _: Reader) -> HTMLResponse:
        rows = await run_in_threadpool(records.list_pipelines)
        return _html(request, "pipelines.html", title="Pipelines", rows=rows)

    @app.get("/api/pipelines", name="pipelines_json")
    async def pipelines_json(_: Reader) -> list[dict[str, Any]]:
        rows = await run_in_threadpool(records.list_pipelines)
        return [
            {
                "pipeline_id": row.run.pipeline_id,
                "model_name": row.run.model_name,
                "repo_url": row.run.repo_url,
                "commit": row.run.commit,
                "state": row.state,
                "attempts": row.attempts,
                "best_accuracy": row.best_accuracy,
                "target": row.run.config.target,
            }
            for row in rows
        ]

    @app.get("/pipelines/{pipeline_id}", response_class=HTMLResponse, name="pipeline_page")
    async def pipeline_page(request: Request, pipeline_id: str, _: Reader) -> HTMLResponse:
        view = await run_in_threadpool(_view, pipeline_id)
        return _html(
            request,
            "pipeline.html",
            title=f"{view.run.model_name} {view.run.commit[:8]}",
            view=view,
            charts=pages.pipeline_charts(view),
        )

    @app.get("/pipelines/{pipeline_id}/live", response_class=HTMLResponse, name="pipeline_live")
    async def pipeline_live(request: Request, pipeline_id: str, _: Reader) -> HTMLResponse:
        view = await run_in_threadpool(_view, pipeline_id)
        return _html(
            request,
            "_pipeline_body.html",
            headers={LIVE_HEADER: str(view.live).lower()},
            view=view,
            charts=pages.pipeline_charts(view),
        )

    @app.get("/api/pipelines/{pipeline_id}", name="pipeline_json")
    async def pipeline_json_route(pipeline_id: str, _: Reader) -> dict[str, Any]:
        view = await run_in_threadpool(_view, pipeline_id)
        return pipeline_json(view)

    @app.get("/runs/{dag_id}/{run_id}", name="run_page")
    async def run_page(
        request: Request, dag_id: str, run_id: str, _: Annotated[Any, Depends(run_reader)]
    ) -> Response:
        """The ``dag_run`` tab: the pipeline of this run, or a note that this run has none."""
        pipeline_id = await run_in_threadpool(records.pipeline_for_run, dag_id, run_id)
        if pipeline_id is not None:
            return RedirectResponse(
                request.url_for("pipeline_page", pipeline_id=pipeline_id).path, status_code=303
            )
        if dag_id in PIPELINE_DAG_IDS:
            message = (
                "This run has not started a pipeline yet: it is waiting for a commit, or it ended "
                "before one was checked out. This page reloads itself."
            )
            refresh = 10
        else:
            message = f"{dag_id} runs train no models: pushtrain's pages belong to {' and '.join(PIPELINE_DAG_IDS)}."
            refresh = None
        return _html(
            request,
            "message.html",
            title="No training attempts",
            message=message,
            refresh=refresh,
            link={"href": request.url_for("pipelines_page").path, "text": "All pipelines"},
        )

    @app.get("/registry", response_class=HTMLResponse, name="registry_page")
    async def registry_page(request: Request, _: Reader) -> HTMLResponse:
        models = await run_in_threadpool(records.registry_view)
        return _html(request, "registry.html", title="Model registry", models=models)

    @app.get("/api/registry", name="registry_json")
    async def registry_json(_: Reader) -> list[dict[str, Any]]:
        models = await run_in_threadpool(records.registry_view)
        return [asdict(model) for model in models]

    return app


@cache
def plugin_app() -> FastAPI:
    """The one app of this process (the plugin manager may ask for it more than once)."""
    return create_app()
