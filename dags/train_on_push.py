"""
### train_on_push: from a git push to a model that meets its target

Watches a branch of the model repository (the `git_default` connection's host, or the `repo_url` Param).
Each new commit is trained once:

1. **wait_for_commit**: a git sensor (reschedule mode: no worker slot while waiting) that takes the branch
   head if no run took it yet. Rule when pushes pile up: runs queue (`max_active_runs=1`) and the newest
   commit wins; commits skipped that way are noted as *superseded* in the ledger under the data dir.
   A backfill run trains the commit that was the branch head at its logical date, if not trained yet.
2. **checkout_commit** into a per-run workspace (removed when the pipeline ends) and read `pushtrain.toml`.
3. **detect_kind** by parsing the model file (never importing it): `cnn`, `linear` or `knn`.
4. **choose_trainer** routes to the training container of that kind; **evaluate** scores the saved model on
   the held-out split in a sandboxed container; **target_met** is the accuracy gate.
5. Target met: **register_model** and a success mail. Below target with budget left: **trigger_retrain**
   starts `tweak_and_retrain` for attempt 2. Budget spent: **report_budget_spent** mails the leaderboard.
   With `promotion = "approve"` in `pushtrain.toml`, **request_approval** then starts an `approve_model`
   run where a person approves the new version before it becomes champion; this run does not wait for the
   answer, so the next push trains meanwhile. Else it is skipped.

Trigger by hand with the Params form (a commit to train now, target, attempts, kind), or replay history with
`airflow backfill create --dag-id train_on_push --from-date ... --to-date ...`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param, PokeReturnValue, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from pushtrain import dag_parts, settings, steps
from pushtrain.kinds import KINDS
from pushtrain.strategies import STRATEGIES

WATCH_INTERVAL = timedelta(minutes=settings.watch_interval_minutes())
POKE_INTERVAL_S = settings.poke_interval_s()
DEFAULT_BRANCH = settings.default_branch()


@dag(
    dag_id="train_on_push",
    schedule=WATCH_INTERVAL,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=dag_parts.default_task_args(),
    doc_md=__doc__,
    tags=["pushtrain", "training"],
    params={
        "repo_url": Param(
            "", type="string", title="Repository URL", description="Empty: the git_default connection's host."
        ),
        "branch": Param(DEFAULT_BRANCH, type="string", minLength=1, title="Branch to watch"),
        "commit": Param(
            "",
            type="string",
            title="Commit to train now",
            description="A SHA or ref. Empty: wait for the next push to the branch.",
        ),
        "target": Param(
            None,
            type=["null", "number"],
            minimum=0.01,
            maximum=1.0,
            title="Target accuracy",
            description="Held-out accuracy that counts as success. Empty: pushtrain.toml, else 0.80.",
        ),
        "max_attempts": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=50,
            title="Max attempts",
            description="Training attempts before giving up. Empty: pushtrain.toml, else 5.",
        ),
        "kind": Param(
            "auto", enum=["auto", *KINDS], title="Model kind", description="auto detects it from the code."
        ),
        "strategy": Param(
            None,
            type=["null", "string"],
            enum=[None, *STRATEGIES],
            title="Tweak strategy",
            description="Empty: pushtrain.toml, else default.",
        ),
    },
)
def train_on_push() -> None:
    @task.sensor(
        task_id="wait_for_commit",
        poke_interval=POKE_INTERVAL_S,
        timeout=WATCH_INTERVAL.total_seconds(),
        mode="reschedule",
        soft_fail=True,
    )
    def wait_for_commit(**context: Any) -> PokeReturnValue:
        """Wait for a commit nobody trained yet; claim it.

        Errors stay plain exceptions here: under ``soft_fail`` an AirflowFailException would only skip.
        """
        params, dag_run = context["params"], context["dag_run"]
        try:
            found = steps.find_commit_to_train(
                remote=dag_parts.remote_for(params),
                branch=params["branch"],
                dag_run_id=dag_run.run_id,
                run_type=str(dag_run.run_type),
                data_interval_end=context.get("data_interval_end"),
                explicit_commit=params["commit"] or None,
            )
        except steps.NothingToTrain as exc:
            raise AirflowSkipException(str(exc)) from None
        return PokeReturnValue(is_done=found is not None, xcom_value=found)

    @task(task_id="checkout_commit")
    @dag_parts.user_errors_fail_fast
    def checkout_commit(found: dict, **context: Any) -> dict:
        """Check out exactly the claimed commit into this pipeline's workspace."""
        return steps.checkout_commit(
            found, context["params"], context["dag_run"].run_id, dag_parts.remote_for(context["params"])
        )

    @task(task_id="detect_kind", retries=0)
    @dag_parts.user_errors_fail_fast
    def detect_kind(checkout: dict) -> str:
        """Parse the model file (bounded subprocess, never imported) and name its kind."""
        return steps.detect_model_kind(checkout["pipeline_id"])

    @task(task_id="prepare_attempt")
    @dag_parts.user_errors_fail_fast
    def prepare_attempt(checkout: dict, kind: str) -> dict:
        """Attempt 1 trains the code exactly as committed, in an image with the packages it declares."""
        return steps.prepare_first_attempt(checkout["pipeline_id"])

    found = wait_for_commit()
    checkout = checkout_commit(found)
    kind = detect_kind(checkout)
    dag_parts.attempt_tail(prepare_attempt(checkout, kind), earlier=[found, checkout, kind])


train_on_push()
