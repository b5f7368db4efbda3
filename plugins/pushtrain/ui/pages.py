"""HTML of the pipeline, pipelines and registry pages: Jinja templates (autoescaped) and server-drawn charts.

The templates live in ``templates/`` beside this module and the stylesheet and the polling script in
``static/``; links are made from the request (``url_for``), so the pages work under whatever path the API
server is served from. Links to Airflow's own pages (a DAG run) are made relative to the same root and open
in the top window, since the pages are normally shown in an iframe of the Airflow UI.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from pushtrain.ui import svg
from pushtrain.ui.records import SCORE_NAMES, TRAIN_DAG_ID, PipelineView

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
APP_PREFIX = "/pushtrain"  # where the plugin mounts the app; Airflow's own pages are beside it


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _timestamp(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _diff_class(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "file"
    if line.startswith("@@"):
        return "hunk"
    return {"+": "add", "-": "del"}.get(line[:1], "")


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(score=_score, seconds=_seconds, timestamp=_timestamp, diff_class=_diff_class)
    return env


def airflow_base(request: Request) -> str:
    """The path of Airflow's UI root as the browser sees it: the app's mount point, less our prefix."""
    root = request.scope.get("root_path", "")
    return (root.removesuffix(APP_PREFIX) if root.endswith(APP_PREFIX) else "") + "/"


def render(request: Request, template: str, **context: Any) -> str:
    base = airflow_base(request)

    def url(name: str, **params: Any) -> str:
        return request.url_for(name, **params).path

    def static_url(path: str) -> str:
        return request.url_for("static", path=path).path

    def airflow_run(dag_id: str, run_id: str) -> str:
        return f"{base}dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"

    return (
        environment()
        .get_template(template)
        .render(
            url=url,
            static_url=static_url,
            airflow_run=airflow_run,
            score_names=SCORE_NAMES,
            dag_ids={"train": TRAIN_DAG_ID},
            **context,
        )
    )


# --- charts --------------------------------------------------------------------------------------------


def accuracy_per_attempt(view: PipelineView) -> str:
    target = view.run.config.target
    bars = []
    for row in view.rows:
        if row.status == "running":
            continue
        if row.accuracy is None:
            bars.append(svg.Bar(f"#{row.attempt}", None, svg.FAILED_COLOUR, row.detail[:80]))
        else:
            bar_colour = svg.MET_COLOUR if row.accuracy >= target else svg.BELOW_COLOUR
            bars.append(svg.Bar(f"#{row.attempt}", row.accuracy, bar_colour, row.move[:80]))
    return svg.bar_chart(
        "accuracy-per-attempt",
        "Held-out accuracy per attempt",
        bars,
        x_label="attempt",
        y_label="accuracy",
        reference=(target, f"target {target:.2f}"),
        empty_message="no attempt judged yet" if view.live else "no attempt was judged",
    )


def accuracy_over_training(view: PipelineView) -> str:
    """Held-out accuracy against the training seconds spent so far, with the best so far."""
    spent, points, best_points, best = 0.0, [], [], None
    for row in view.rows:
        if row.train_seconds is not None:
            spent += row.train_seconds
        if row.accuracy is None:
            continue
        points.append((round(spent, 3), row.accuracy))
        best = row.accuracy if best is None else max(best, row.accuracy)
        best_points.append((round(spent, 3), best))
    target = view.run.config.target
    series = [
        svg.Series("attempts", points, svg.colour(0)),
        svg.Series("best so far", best_points, svg.colour(2), dashed=True),
    ]
    return svg.line_chart(
        "accuracy-over-training",
        "Held-out accuracy against cumulative training seconds",
        series,
        x_label="training seconds, cumulative",
        y_label="accuracy",
        y_range=(0.0, 1.0),
        reference=(target, f"target {target:.2f}"),
        empty_message="no attempt evaluated yet" if view.live else "no attempt was evaluated",
    )


def learning_curves(view: PipelineView, kind: str) -> str:
    """Per-epoch ``accuracy`` or ``loss`` of every attempt: validation solid, training dashed."""
    series = []
    for index, row in enumerate(view.rows):
        for name, dashed in ((f"val_{kind}", False), (kind, True)):
            points = [(epoch.epoch, epoch.scores[name]) for epoch in row.epochs if name in epoch.scores]
            if points:
                label = f"#{row.attempt} {'validation' if not dashed else 'training'}"
                series.append(svg.Series(label, points, svg.colour(index), dashed))
    title = f"Learning curves: {kind} per epoch (validation solid, training dashed)"
    y_range = (0.0, 1.0) if kind == "accuracy" else None
    waiting = "no attempt has finished an epoch yet" if view.live and not series else ""
    return svg.line_chart(
        f"learning-curves-{kind}",
        title,
        series,
        x_label="epoch",
        y_label=kind,
        y_range=y_range,
        empty_message=waiting or f"no attempt reported a per-epoch {kind}",
    )


def confusion_matrix(view: PipelineView) -> str:
    confusion = view.confusion
    if confusion is None:
        best = view.best
        message = (
            "the best attempt's evaluation recorded no confusion matrix"
            if best
            else "no attempt evaluated yet"
        )
        return svg.empty_chart("confusion-matrix", "Confusion matrix of the best attempt", message)
    return svg.heatmap(
        "confusion-matrix",
        f"Confusion matrix of the best attempt (#{confusion.attempt})",
        confusion.matrix,
        confusion.labels,
    )


def pipeline_charts(view: PipelineView) -> list[Markup]:
    charts = [
        accuracy_per_attempt(view),
        accuracy_over_training(view),
        learning_curves(view, "accuracy"),
        learning_curves(view, "loss"),
        confusion_matrix(view),
    ]
    return [Markup(chart) for chart in charts]  # svg.py escapes every text it draws
