"""``promotion = "approve"``: a person approves or rejects a new version in Airflow before it becomes champion.

With ``promotion = "approve"`` in ``pushtrain.toml``, ``register_model`` makes a version that met its target
and passed its model tests ``challenger``, and the pipeline's ``request_approval`` task (a
:class:`RequestApprovalOperator`) starts a run of the ``approve_model`` DAG for it, run id
``approval__<model>__v<N>``, and does not wait for it: the pipeline run ends at once, so a version waiting
for a person holds up no other push's training (``train_on_push`` runs one pipeline at a time). That run's
``approve_model`` task (a :class:`ModelApprovalOperator`, the standard provider's ``ApprovalOperator``)
asks in the web UI's *Required Actions* (or ``PATCH /api/v2/dags/approve_model/dagRuns/<run id>/
taskInstances/approve_model/-1/hitlDetails``), showing the candidate's figures against the champion's. The
wait holds no worker slot: the task is parked in Airflow's ``awaiting_input`` state until the answer or the
timeout arrives.

* **Approve**: ``champion`` moves to the version (the alias history names the approving user, else the
  DAG run) and the champion event goes out on ``pushtrain-model://<name>`` through ``MODELS_ALIAS``, so
  ``deploy_model`` serves it.
* **Reject**: it stays challenger; the ``champion`` history records the refusal with the reason given.
* **No answer** within ``approval_timeout_hours``: it stays challenger, and the history says so.

All three end the task in success: an answer, even "no", is the task doing its work.
"""

from __future__ import annotations

import html
import urllib.parse
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from pushtrain.model_assets import MODELS_ALIAS, champion_event_extra, model_asset

if TYPE_CHECKING:
    from airflow.sdk import Context

    from pushtrain.registry import ModelRegistry, ModelVersion

APPROVAL_DAG_ID = "approve_model"
APPROVAL_TASK_ID = "approve_model"
REQUEST_TASK_ID = "request_approval"
REGISTER_TASK_ID = "register_model"
APPROVED, REJECTED, TIMED_OUT = "approved", "rejected", "timed_out"
MAX_DIFF_CHARS = 6000  # the approval page shows the winning change; a huge diff is cut, the registry has it


def approval_run_id(model_name: str, number: int) -> str:
    """The ``approve_model`` run of one candidate: known before it exists (the mail links to it), and the same
    on a retried request, which then finds the run and starts no second one."""
    return f"approval__{model_name}__v{number}"


def approval_conf(registered: dict, requested_by: str) -> dict[str, Any]:
    """The ``approve_model`` run's conf for ``register_model``'s candidate: what its request shows."""
    return {
        "model_name": registered["model_name"],
        "version": registered["version"],
        "pipeline_id": registered.get("pipeline_id") or "",
        "approval_timeout_hours": registered["approval_timeout_hours"],
        "model_tests": registered.get("model_tests") or {},
        "requested_by": requested_by,
    }


def approval_page_url(
    base_url: str, run_id: str, dag_id: str = APPROVAL_DAG_ID, task_id: str = APPROVAL_TASK_ID
) -> str:
    """The web UI's page where a person approves or rejects this run's candidate (its *Required Actions*)."""
    quote = urllib.parse.quote
    return (
        f"{base_url.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
        f"/tasks/{quote(task_id, safe='')}/required_actions?map_index=-1"
    )


def airflow_base_url() -> str:
    """Where people reach this Airflow's web UI: ``[api] base_url``."""
    from airflow.sdk import conf

    return conf.get("api", "base_url", fallback="") or "http://localhost:8080"


# --- what the person sees -------------------------------------------------------------------------------


def approval_request(
    registry: ModelRegistry, model_name: str, number: int, registered: dict | None = None
) -> tuple[str, str]:
    """(subject, Markdown body) of the approval request: the candidate against the champion, and its diff."""
    candidate = registry.get(model_name, number)
    champion = registry.champion(model_name)
    if champion is not None and champion.number == candidate.number:
        champion = None  # promoted meanwhile (a person's CLI move): nothing to compare with but itself
    registered = registered or {}
    lineage = candidate.lineage
    accuracy = candidate.metric_value
    if champion is None:
        verdict = "no champion yet"
    else:
        against = _champion_figure(candidate, champion)
        relation = "beats" if accuracy > against else "equals" if accuracy == against else "is below"
        verdict = f"{relation} champion {champion.label}"
    subject = f"Promote {model_name} {candidate.label} to champion? accuracy {accuracy:.4f}, {verdict}"

    rows = [_row("held-out accuracy", _metric(candidate), _metric(champion) if champion else "-")]
    retrain = lineage.get("retrain") or {}
    if champion is not None and retrain.get("champion_rescored_on_new_split"):
        rows.append(
            _row(
                f"champion re-scored on {retrain['dataset']} v{retrain['to_version']}",
                "-",
                f"{retrain['champion_accuracy_new_split']:.4f}",
            )
        )
    cand_recall, champ_recall = _per_class_recall(candidate), _per_class_recall(champion)
    for name in sorted(set(cand_recall) | set(champ_recall), key=_natural):
        rows.append(
            _row(
                f"recall of class {name}", _fraction(cand_recall.get(name)), _fraction(champ_recall.get(name))
            )
        )
    rows.append(_row("model size", _size(candidate), _size(champion) if champion else "-"))
    rows.append(_row("latency", _latency(candidate, registered), _latency(champion, {}) if champion else "-"))
    rows.append(_row("commit", _commit(candidate), _commit(champion) if champion else "-"))
    rows.append(_row("data set", _dataset(candidate), _dataset(champion) if champion else "-"))
    rows.append(
        _row(
            "kind",
            str(lineage.get("kind") or "-"),
            str(champion.lineage.get("kind") or "-") if champion else "-",
        )
    )
    tests = (registered.get("model_tests") or {}).get("summary") or "-"
    rows.append(_row("model tests", tests, "-"))

    champion_head = champion.label if champion else "(none)"
    hours = registered.get("approval_timeout_hours")
    lines = [
        f"**{model_name} {candidate.label}** met its target and passed its model tests: {verdict}.",
        "",
        f"| | candidate {candidate.label} | champion {champion_head} |",
        "|---|---|---|",
        *rows,
        "",
        *_hparams_changes(candidate, champion),
        "**Approve**: it becomes champion and `deploy_model` serves it. **Reject**: it stays challenger "
        "(say why in *reason*)." + (f" No answer within {hours:g} h: it stays challenger." if hours else ""),
    ]
    diff = str(lineage.get("tweak_diff") or "")
    if diff:
        cut = (
            diff
            if len(diff) <= MAX_DIFF_CHARS
            else diff[:MAX_DIFF_CHARS] + "\n... (cut; the registry keeps it)"
        )
        lines += ["", "The winning change to the committed model file:", "", "```diff", cut, "```"]
    else:
        lines += ["", "The committed model file trained as it is (no tweak)."]
    return subject, "\n".join(lines)


def _champion_figure(candidate: ModelVersion, champion: ModelVersion) -> float:
    """The champion's accuracy the candidate is compared with: re-scored on the candidate's split if it was."""
    retrain = candidate.lineage.get("retrain") or {}
    if retrain.get("champion_rescored_on_new_split") and retrain.get("champion_version") == champion.number:
        return float(retrain["champion_accuracy_new_split"])
    return champion.metric_value


def _row(label: str, candidate: str, champion: str) -> str:
    return f"| {label} | {_cell(candidate)} | {_cell(champion)} |"


def _cell(text: str) -> str:
    return html.escape(text).replace("|", "\\|").replace("\n", " ")


def _metric(version: ModelVersion) -> str:
    return f"{version.metric_value:.4f}"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _per_class_recall(version: ModelVersion | None) -> dict[str, float]:
    if version is None:
        return {}
    per_class = version.metrics.get("per_class") or {}
    return {str(name): float(scores["recall"]) for name, scores in per_class.items() if "recall" in scores}


def _natural(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _size(version: ModelVersion) -> str:
    size = sum(path.stat().st_size for path in version.artifact_dir.rglob("*") if path.is_file())
    return f"{size / 1e6:.2f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def _latency(version: ModelVersion, registered: dict) -> str:
    """A recorded latency: the metrics' ``latency_ms``, else the slowest model test's time; else none."""
    metrics = version.metrics
    if isinstance(metrics.get("latency_ms"), int | float):
        return f"{metrics['latency_ms']:.1f} ms"
    timed = [
        t for t in (registered.get("model_tests") or {}).get("tests") or [] if t.get("seconds") is not None
    ]
    if timed:
        slowest = max(timed, key=lambda t: t["seconds"])
        return f"model test {slowest['name']}: {slowest['seconds']:.3f} s"
    return "not recorded"


def _commit(version: ModelVersion) -> str:
    return str(version.lineage.get("commit") or "-")[:8]


def _dataset(version: ModelVersion) -> str:
    dataset = version.lineage.get("dataset") or {}
    return f"{dataset.get('name', '-')} {dataset.get('split_version', '')}".strip()


def _hparams_changes(candidate: ModelVersion, champion: ModelVersion | None) -> list[str]:
    mine = candidate.lineage.get("hparams") or {}
    theirs = (champion.lineage.get("hparams") or {}) if champion else {}
    if champion is None:
        shown = ", ".join(f"`{k}={mine[k]!r}`" for k in sorted(mine)) or "none"
        return [f"Hyperparameters: {shown}.", ""]
    changed = [
        f"`{k}`: {theirs.get(k, '(unset)')!r} -> {mine.get(k, '(unset)')!r}"
        for k in sorted(set(mine) | set(theirs))
        if mine.get(k) != theirs.get(k)
    ]
    if not changed:
        return [f"Hyperparameters: the same as champion {champion.label}'s.", ""]
    return [f"Hyperparameters against champion {champion.label}: " + "; ".join(changed) + ".", ""]


# --- the answer -----------------------------------------------------------------------------------------


def apply_answer(
    registry: ModelRegistry,
    model_name: str,
    number: int,
    outcome: str,
    *,
    by: str,
    reason: str = "",
    timeout_hours: float | None = None,
) -> dict[str, Any]:
    """Act on the person's answer (or its absence): promote, or record why the version stays challenger."""
    from pushtrain.registry import CHAMPION

    version = registry.get(model_name, number)
    said = f": {reason.strip()}" if reason and reason.strip() else ""
    if outcome == APPROVED:
        before = registry.champion(model_name)
        was = f"champion was {before.label}" if before else "no champion before"
        move = registry.set_alias(
            model_name, CHAMPION, version, reason=f"approved {version.label} ({was}){said}", by=by
        )
        why = move.reason if move else f"{version.label} is already champion"
        return {
            "model_name": model_name,
            "version": number,
            "outcome": outcome,
            "by": by,
            "reason": why,
            "is_champion": True,
        }
    if outcome == REJECTED:
        why = f"rejected in review; stays challenger{said or ': no reason given'}"
    elif outcome == TIMED_OUT:
        hours = f"{timeout_hours:g} h" if timeout_hours else "the approval timeout"
        why = f"no answer within {hours}; stays challenger"
    else:
        raise ValueError(
            f"unknown approval outcome {outcome!r}; expected {APPROVED}, {REJECTED} or {TIMED_OUT}"
        )
    move = registry.record_refusal(model_name, CHAMPION, version, reason=why, by=by)
    return {
        "model_name": model_name,
        "version": number,
        "outcome": outcome,
        "by": by,
        "reason": move.reason,
        "is_champion": False,
    }


def _actor(responded_by: Any, dag_id: str, run_id: str) -> str:
    """``user:<name>`` of whoever answered, else the DAG run (a timeout answers for nobody)."""
    if isinstance(responded_by, dict) and (responded_by.get("name") or responded_by.get("id")):
        return f"user:{responded_by.get('name') or responded_by.get('id')}"
    return f"dag_run:{dag_id}/{run_id}"


def _candidate(context: Context) -> dict[str, Any]:
    """The ``approve_model`` run's candidate (its conf, read as the DAG's Params); a clear error if none."""
    params = context["params"]
    name, number = params.get("model_name") or "", params.get("version")
    if not name or not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise AirflowFailException(
            f"no candidate to approve (model_name={name!r}, version={number!r}): trigger approve_model with "
            "the model_name and version of a registered version; the pipelines' request_approval does"
        )
    return {
        "model_name": name,
        "version": number,
        "approval_timeout_hours": float(params.get("approval_timeout_hours") or 24.0),
        "model_tests": params.get("model_tests") or {},
    }


class ModelApprovalOperator(ApprovalOperator):
    """Ask a person to approve the ``approve_model`` run's candidate; act on the answer (see the module doc).

    The candidate (model_name, version) and what the request shows (approval_timeout_hours, model_tests)
    come from the run's conf, read through the DAG's Params. The request's subject, body and timeout are
    made at run time from the registry; a rejection or a timeout is an outcome, not a failure: the task
    succeeds.
    """

    def __init__(self, *, task_id: str = APPROVAL_TASK_ID, **kwargs: Any) -> None:
        kwargs.setdefault("subject", "Promote the new model version to champion?")
        # The form's one field. Set here, not defaulted: Airflow hands __init__ the DAG's Params (model_name,
        # ...), which the provider filters out, and a field needs source "task" to stay.
        kwargs["params"] = {
            "reason": Param(
                "", type="string", title="Reason", description="Kept in the alias history", source="task"
            )
        }
        super().__init__(task_id=task_id, outlets=[MODELS_ALIAS], **kwargs)

    def execute(self, context: Context) -> Any:
        from pushtrain import settings
        from pushtrain.registry import ModelRegistry, VersionNotFoundError

        candidate = _candidate(context)
        registry = ModelRegistry(settings.registry_dir())
        try:
            self.subject, self.body = approval_request(
                registry, candidate["model_name"], candidate["version"], candidate
            )
        except VersionNotFoundError as exc:
            raise AirflowFailException(f"nothing to approve: {exc}") from None
        self.response_timeout = timedelta(hours=candidate["approval_timeout_hours"])
        ti = context["ti"]
        self.log.info(
            "waiting for a person's answer at %s", approval_page_url(airflow_base_url(), ti.run_id, ti.dag_id)
        )
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        from pushtrain import settings
        from pushtrain.registry import ModelRegistry

        ti = context["ti"]
        candidate = _candidate(context)
        name, number = candidate["model_name"], candidate["version"]
        registry = ModelRegistry(settings.registry_dir())
        if event.get("error_type") == "timeout":
            outcome, chosen, answer = TIMED_OUT, None, {}
        else:
            # The provider's checks of the answer, without ApprovalOperator's skipping of downstream tasks.
            answer = HITLOperator.execute_complete(self, context=context, event=event)
            chosen = answer["chosen_options"][0]
            outcome = APPROVED if chosen == self.APPROVE else REJECTED
        self.hitl_summary_extra["approved"] = outcome == APPROVED
        result = apply_answer(
            registry,
            name,
            number,
            outcome,
            by=_actor(event.get("responded_by_user"), ti.dag_id, ti.run_id),
            reason=str((answer.get("params_input") or {}).get("reason") or ""),
            timeout_hours=candidate["approval_timeout_hours"],
        )
        if outcome == APPROVED:
            context["outlet_events"][MODELS_ALIAS].add(
                model_asset(name), extra=champion_event_extra(name, number)
            )
        self.log.info("%s v%s: %s (%s)", name, number, result["reason"], result["by"])
        return result


class RequestApprovalOperator(TriggerDagRunOperator):
    """Start the ``approve_model`` run of ``register_model``'s candidate, and do not wait for it.

    Skipped when ``register_model`` did not ask for approval (``promotion = "auto"``, failed model tests).
    The run id is :func:`approval_run_id`: a retried request finds the run and starts no second one.
    """

    def __init__(self, *, task_id: str = REQUEST_TASK_ID, **kwargs: Any) -> None:
        super().__init__(
            task_id=task_id,
            trigger_dag_id=APPROVAL_DAG_ID,
            skip_when_already_exists=True,
            # A paused approve_model would leave the request queued and the person with nothing to answer.
            fail_when_dag_is_paused=True,
            wait_for_completion=False,  # the pipeline run ends now; the approval runs on its own
            **kwargs,
        )

    def execute(self, context: Context) -> Any:
        ti = context["ti"]
        registered = ti.xcom_pull(task_ids=REGISTER_TASK_ID) or {}
        if not registered.get("awaiting_approval"):
            raise AirflowSkipException("no approval needed: the promotion rule decided (promotion = auto)")
        self.trigger_run_id = approval_run_id(registered["model_name"], registered["version"])
        self.conf = approval_conf(registered, requested_by=f"dag_run:{ti.dag_id}/{ti.run_id}")
        self.log.info(
            "approval of %s v%s requested: %s",
            registered["model_name"],
            registered["version"],
            approval_page_url(airflow_base_url(), self.trigger_run_id),
        )
        return super().execute(context)
