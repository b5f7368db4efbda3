"""The mails a data scientist gets: target met, budget spent, pipeline failed.

Content comes from the pipeline's records (``pipeline.Pipeline``, ``pipeline.Attempt``), so every mail can
be rebuilt from what is on disk. ``PipelineMailNotifier`` is an ``SmtpNotifier``: it sends through the
``smtp_default`` connection, and it fills in recipient, subject and body only after Airflow rendered its
templates, so text from a commit (message, diff) is never evaluated as Jinja.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import Connection
from airflow.sdk.exceptions import AirflowNotFoundException

from pushtrain import pipeline, settings

if TYPE_CHECKING:
    from airflow.sdk import Context

SUCCESS = "success"
BUDGET_SPENT = "budget_spent"
FAILURE = "failure"

_said_no_connection = False  # the missing-connection warning is given once per process


def _recipient(run: pipeline.Pipeline | None) -> str:
    return settings.notify_to() or (run.author_email if run else "") or "pushtrain@localhost"


def model_tests_html(outcome: dict) -> str:
    """The repository's model tests: a line when they passed, each failing test and its message when not."""
    if not outcome.get("ran"):
        return ""
    if outcome.get("passed"):
        return f"<li>Model tests: {html.escape(outcome['summary'])}</li>"
    failing = "".join(
        f"<li><code>{html.escape(t['name'])}</code>: {html.escape(t['message'])}</li>"
        for t in outcome["tests"]
        if not t["passed"]
    )
    return f"<li><b>Model tests failed</b>: the version is challenger, not champion<ul>{failing}</ul></li>"


def adaptation_html(run: pipeline.Pipeline) -> str:
    """How ``pushtrain adapt`` rewrote the pushed script for this run (before any tweak); empty if it did not."""
    if not run.adaptation_diff:
        return ""
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in run.adaptation_notes)
    return (
        f"<h3>Adaptation of {html.escape(run.config.entry)} into the model contract</h3>\n"
        f"<p>The pushed file did not meet the contract, so pushtrain adapt rewrote it (parsed, never run); "
        f"attempt 1 trained the adapted file and the tweaks below start from it.</p>\n"
        f"<ul>{notes}</ul>\n<pre>{html.escape(run.adaptation_diff)}</pre>\n"
    )


def approval_html(registered: dict) -> str:
    """Under ``promotion = "approve"``: the version waits for a person, and where they answer."""
    if not registered.get("awaiting_approval"):
        return ""
    url = registered.get("approval_url") or ""
    run_id = registered.get("approval_run_id") or ""
    where = f'<a href="{html.escape(url)}">{html.escape(url)}</a>' if url else "the Airflow web UI"
    of_run = f" of the approve_model run {html.escape(run_id)}" if run_id else ""
    hours = registered.get("approval_timeout_hours")
    timeout = f" No answer within {hours:g} h keeps it challenger." if hours else ""
    return (
        f"<li><b>Approval awaited</b>: version {registered['version']} is challenger until a person approves "
        f"it (promotion = approve): approve or reject it at {where} (Required Actions{of_run}), where its "
        f"figures stand against the champion's. Approved, it becomes champion and is deployed.{timeout}</li>"
    )


def leaderboard_html(records: list[pipeline.Attempt], target: float) -> str:
    """One row per attempt, best first; a failed attempt last, with the reason it failed."""
    rows = []
    for record in sorted(records, key=lambda r: (r.accuracy is None, -(r.accuracy or 0.0), r.attempt)):
        hparams = ", ".join(f"{k}={v}" for k, v in sorted(record.hparams.items()))
        if record.accuracy is None:
            cells = f"<td>-</td><td>failed: {html.escape(record.reason)}</td><td>-</td>"
        else:
            seconds = f"{record.timings.train_seconds:.1f}"
            if record.warm_start_from:
                seconds += f" (continued attempt {record.warm_start_from})"
            result = "meets target" if record.accuracy >= target else "below target"
            cells = f"<td>{record.accuracy:.4f}</td><td>{result}</td><td>{seconds}</td>"
        why = f"<br><i>{html.escape(record.tweak_reason)}</i>" if record.tweak_reason else ""
        rows.append(f"<tr><td>{record.attempt}</td>{cells}<td>{html.escape(hparams)}{why}</td></tr>")
    return (
        "<table border='1' cellpadding='4'><tr><th>attempt</th><th>held-out accuracy</th>"
        "<th>result</th><th>train s</th><th>hyperparameters</th></tr>" + "".join(rows) + "</table>"
    )


def examples_word(run: pipeline.Pipeline) -> str:
    """What the held-out split of the pipeline's pinned data set holds: ``images``, ``rows`` (a table), or
    ``examples`` when its manifest cannot be read (cleaned up, or a record from before the pin)."""
    from pushtrain import datasets

    try:
        manifest = datasets.load_manifest(*run.pinned_dataset)
    except (OSError, ValueError, datasets.DatasetError):  # a name no store could hold, an unreadable file
        manifest = None
    if manifest is None:
        return "examples"
    return {datasets.IMAGES: "images", datasets.TABLE: "rows"}.get(manifest.kind, "examples")


def retrain_html(pipeline_id: str) -> str:
    """For a pipeline ``retrain_on_new_data`` made: what it retrained, and what the promotion compared."""
    from pushtrain import rescore

    record = rescore.retrain_record(pipeline_id)
    if not record:
        return ""
    dataset = html.escape(record["dataset"])
    head = (
        f"<li>Retrain on new data: champion v{record['champion_version']} (its code and final HPARAMS) on "
        f"{dataset} v{record['to_version']}, trained before on v{record['from_version']}. "
        f"The champion's accuracy: {record['champion_accuracy']:.4f} on "
        f"{html.escape(record['champion_accuracy_measured_on'])}'s held-out split"
    )
    if record.get("champion_rescored_on_new_split"):
        return (
            f"{head}, {record['champion_accuracy_new_split']:.4f} re-scored on {dataset} "
            f"v{record['to_version']}'s (promotion compares the retrained model with this figure)</li>"
        )
    if record.get("champion_rescore_failure"):
        return (
            f"{head}; it could not be re-scored on v{record['to_version']}'s: "
            f"{html.escape(record['champion_rescore_failure'])} (the retrained model was not promoted)</li>"
        )
    return f"{head}; not re-scored on v{record['to_version']}'s: nothing was registered to compare</li>"


def success_mail(pipeline_id: str, registered: dict[str, Any]) -> tuple[str, str]:
    run = pipeline.Pipeline.load(pipeline_id)
    records = pipeline.attempt_records(pipeline_id)
    winner = next(r for r in records if r.attempt == registered["attempt"])
    accuracy = winner.accuracy
    subject = (
        f"[pushtrain] {run.model_name} {run.commit[:8]}: target met, accuracy {accuracy:.4f} "
        f">= {run.config.target:.2f} after {len(records)} attempt(s)"
        + (", approval awaited" if registered.get("awaiting_approval") else "")
    )
    as_is = "the adapted file" if run.adaptation_diff else "the committed code"
    diff = winner.tweak_diff or f"(none: {as_is} met the target as it is)"
    branch = registered.get("pushed_branch")
    body = f"""<h2>Your model met its target</h2>
<ul>
<li>Repository: {html.escape(run.repo_url)} (branch {html.escape(run.branch)})</li>
<li>Commit: <code>{run.commit}</code> by {html.escape(run.author_name)}: {html.escape(run.commit_message)}</li>
<li>Held-out accuracy: <b>{accuracy:.4f}</b> against target {run.config.target:.4f} \
({winner.evaluation.n_evaluated} {examples_word(run)} of {html.escape(run.dataset_label)})</li>
<li>Attempts: {len(records)} of at most {run.config.max_attempts}; winner: attempt {winner.attempt}</li>
{retrain_html(pipeline_id)}<li>Registered: {html.escape(registered["model_name"])} version {registered["version"]} at \
<code>{html.escape(registered["path"])}</code>; champion: {html.escape(registered["promotion"])}</li>
{model_tests_html(registered.get("model_tests") or {})}{approval_html(registered)}
<li>Tuned model file: {html.escape(branch) if branch else "not pushed (commit-back off or read-only remote)"}</li>
</ul>
{adaptation_html(run)}<h3>The winning change to {html.escape(run.config.entry)}</h3>
<pre>{html.escape(diff)}</pre>
<h3>All attempts</h3>
{leaderboard_html(records, run.config.target)}
"""
    return subject, body


def budget_spent_mail(pipeline_id: str, reason: str) -> tuple[str, str]:
    run = pipeline.Pipeline.load(pipeline_id)
    records = pipeline.attempt_records(pipeline_id)
    best = pipeline.best_record(records)
    best_accuracy = f"{best.accuracy:.4f}" if best else "none evaluated"
    subject = (
        f"[pushtrain] {run.model_name} {run.commit[:8]}: target {run.config.target:.2f} not met, best "
        f"{best_accuracy} after {len(records)} attempt(s)"
    )
    body = f"""<h2>Your model did not reach its target</h2>
<p>Why it stopped: {html.escape(reason)}.</p>
<ul>
<li>Repository: {html.escape(run.repo_url)}, commit <code>{run.commit}</code></li>
<li>Best: attempt {best.attempt if best else "-"}, held-out accuracy {best_accuracy} against target \
{run.config.target:.4f}</li>
<li>Outputs: <code>{html.escape(str(pipeline.pipeline_dir(pipeline_id)))}</code></li>
{retrain_html(pipeline_id)}</ul>
{adaptation_html(run)}<h3>Best attempt's change</h3>
<pre>{html.escape((best.tweak_diff if best else "") or "(the committed code)")}</pre>
<h3>Leaderboard</h3>
{leaderboard_html(records, run.config.target)}
<p>Raise max_attempts in pushtrain.toml, lower the target, or change the model's architecture.</p>
"""
    return subject, body


def failure_mail(context: Context) -> tuple[str, str, pipeline.Pipeline | None]:
    ti = context["ti"]
    exception = context.get("exception")
    run = None
    prepared = ti.xcom_pull(task_ids="prepare_attempt") or {}
    pipeline_id = prepared.get("pipeline_id") or (ti.xcom_pull(task_ids="checkout_commit") or {}).get(
        "pipeline_id"
    )
    if pipeline_id:
        try:
            run = pipeline.Pipeline.load(pipeline_id)
        except FileNotFoundError:
            run = None
    commit = (ti.xcom_pull(task_ids="wait_for_commit") or {}).get("commit") or (run.commit if run else "?")
    subject = f"[pushtrain] {ti.dag_id} failed at {ti.task_id} (commit {commit[:8]})"
    # The message comes first: for a failure in the model code it starts with what to do about it.
    body = f"""<h2>pushtrain could not finish this run</h2>
<pre>{html.escape(str(exception) if exception else "no error message")}</pre>
<p>Step <b>{html.escape(ti.task_id)}</b> of {html.escape(ti.dag_id)} failed (run {html.escape(ti.run_id)}).
The Airflow task log has the full output of the step.</p>
"""
    return subject, body, run


class PipelineMailNotifier(SmtpNotifier):
    """Send one of pushtrain's mails through ``smtp_default``.

    :param mail: ``success`` (after ``register_model``), ``budget_spent`` (after ``report_budget_spent``)
        or ``failure`` (any task).
    """

    def __init__(self, mail: str, **kwargs: Any) -> None:
        kwargs.setdefault("from_email", settings.mail_from())
        kwargs.setdefault("smtp_conn_id", settings.SMTP_CONN_ID)
        super().__init__(to="pushtrain@localhost", subject="pushtrain", html_content="", **kwargs)
        self.mail = mail

    def notify(self, context: Context) -> None:
        if not self._connection_defined():
            return
        ti = context["ti"]
        run = None
        if self.mail == FAILURE:
            self.subject, self.html_content, run = failure_mail(context)
        else:
            result = ti.xcom_pull(task_ids=ti.task_id)
            run = pipeline.Pipeline.load(result["pipeline_id"])
            if self.mail == SUCCESS:
                self.subject, self.html_content = success_mail(result["pipeline_id"], result)
            else:
                self.subject, self.html_content = budget_spent_mail(result["pipeline_id"], result["reason"])
        self.to = _recipient(run)
        super().notify(context)

    def _connection_defined(self) -> bool:
        """Without the connection (``airflow dags test`` on a fresh install) say so once, as a warning."""
        global _said_no_connection
        try:
            Connection.get(self.smtp_conn_id)
        except AirflowNotFoundException:
            if not _said_no_connection:
                _said_no_connection = True
                self.log.warning(
                    "no mail sent: there is no %r connection. Set AIRFLOW_CONN_%s (see .env_example) or add "
                    "the connection in the web UI (Admin > Connections) to get pushtrain's mails",
                    self.smtp_conn_id,
                    self.smtp_conn_id.upper(),
                )
            return False
        return True
