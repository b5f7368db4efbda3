"""Start ``train_on_push`` for a pushed commit from inside the API server: what the webhook does once a push
is verified.

- **One run per (repository, commit).** The run id is ``webhook__<repository>-<hash of its URL>__<sha>``,
  so a redelivered event finds its run and starts nothing new (also when two deliveries race: the run id
  is unique in Airflow's database).
- **Claimed before it is started.** The commit is claimed in the ledger for that run id first, so the
  sensor of a scheduled run never takes it too; the webhook's run then takes its own claim as an explicit
  commit. A commit the sensor claimed first is left to the sensor's run. If the run cannot be created the
  claim is released, and the sensor can still train the commit.
- **Bounded per repository.** At most ``MAX_QUEUED_PER_REPOSITORY`` webhook runs of one repository may be
  queued or running; a push beyond that is answered 429 and left unclaimed, so the sensor trains the branch
  head (the newest commit) once the queue drains, as it does for every other push.
- **An idle watcher makes way.** ``train_on_push`` runs one at a time (``max_active_runs=1``), and a
  scheduled run spends most of its life in ``wait_for_commit`` waiting for a push: the webhook's run would
  queue behind it for up to a watch interval. So the waiting sensors of runs without an explicit commit are
  marked skipped, their normal end when no commit comes, with every task after them (none has anything to
  do without a commit), and those runs end at once. Nothing is lost: a
  commit such a run would have seen is claimed by nobody and the next scheduled run takes it, as it takes a
  push that arrives while another run trains. Only a sensor that is not poking (between two pokes, waiting
  for a retry, or not started yet) and whose run claimed no commit is touched; one that is poking is left
  to finish its poke, and for ``MAKE_WAY_SECONDS`` after the push a background thread looks again each
  second while the webhook's run is still queued.

The run is created with ``airflow.api.common.trigger_dag.trigger_dag``, the function behind Airflow's own
"trigger" API (the same ``create_dagrun`` with its Params validation), with ``triggered_by=rest_api``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from pushtrain import gitops, ledger
from pushtrain.ui.records import TRAIN_DAG_ID
from pushtrain.ui.webhook import Push, WatchedRepository, WebhookError

log = logging.getLogger(__name__)

RUN_PREFIX = "webhook__"
SENSOR_TASK_ID = "wait_for_commit"
MAX_QUEUED_PER_REPOSITORY = 2
MAKE_WAY_SECONDS = 120.0  # longer than a sensor's poke, even on a busy machine
TRIGGERING_USER = "pushtrain-webhook"
_repository_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


@dataclass(frozen=True)
class Started:
    status: str  # started | already_started | already_claimed | busy
    reason: str
    run_id: str
    dag_id: str = TRAIN_DAG_ID
    yielded: list[str] = field(default_factory=list)  # idle watcher runs that made way

    @property
    def http_status(self) -> int:
        return {"started": 202, "busy": 429}.get(self.status, 200)


def run_prefix(repository: WatchedRepository) -> str:
    digest = hashlib.sha256(repository.key.encode()).hexdigest()[:8]
    return f"{RUN_PREFIX}{gitops.safe_name(repository.name)[:40]}-{digest}__"


def run_id_for(repository: WatchedRepository, sha: str) -> str:
    """The one run id of (repository, commit)."""
    return run_prefix(repository) + sha


def start_training(push: Push, repository: WatchedRepository) -> Started:
    """Claim the pushed commit and create its ``train_on_push`` run, unless it exists or is taken."""
    run_id = run_id_for(repository, push.sha)
    with _repository_locks[repository.key]:  # one check-then-create at a time per repository, in this process
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from airflow.utils.state import DagRunState
        from sqlalchemy import func, select

        with create_session() as session:
            if session.scalar(
                select(DagRun.id).where(DagRun.dag_id == TRAIN_DAG_ID, DagRun.run_id == run_id)
            ):
                return Started("already_started", "this push already started its run", run_id)
            queued = session.scalar(
                select(func.count(DagRun.id)).where(
                    DagRun.dag_id == TRAIN_DAG_ID,
                    DagRun.run_id.startswith(run_prefix(repository), autoescape=True),
                    DagRun.state.in_((DagRunState.QUEUED, DagRunState.RUNNING)),
                )
            )
        if queued >= MAX_QUEUED_PER_REPOSITORY:
            return Started(
                "busy",
                f"{queued} webhook runs of this repository are queued or running; the "
                "sensor trains the branch head once they are done",
                run_id,
            )
        if not ledger.claim(repository.ledger_url, push.sha, run_id):
            holder = (ledger.read(repository.ledger_url, push.sha) or {}).get("run_id", "another run")
            return Started("already_claimed", f"commit {push.sha[:8]} was already taken by {holder}", run_id)
        try:
            created = _create_run(push, repository, run_id)
        except BaseException:
            ledger.release(repository.ledger_url, push.sha, run_id)
            raise
    if not created:
        return Started("already_started", "a concurrent delivery of this push started its run", run_id)
    yielded = yield_idle_watchers(run_id)
    if MAKE_WAY_SECONDS > 0:
        threading.Thread(
            target=_make_way_while_queued,
            args=(run_id, time.monotonic() + MAKE_WAY_SECONDS),
            name=f"make-way-{push.sha[:8]}",
            daemon=True,
        ).start()
    reason = f"train_on_push run {run_id} queued for {push.branch}@{push.sha[:8]}"
    if yielded:
        reason += f"; idle watcher run(s) {', '.join(yielded)} made way"
    return Started("started", reason, run_id, yielded=yielded)


def _create_run(push: Push, repository: WatchedRepository, run_id: str) -> bool:
    """Create the run; False if a run with this id appeared meanwhile (another API server process)."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagNotFound, DagRunAlreadyExists
    from airflow.utils.types import DagRunTriggeredByType
    from sqlalchemy.exc import IntegrityError

    conf = {"commit": push.sha, "branch": push.branch, "repo_url": repository.conf_url}
    note = f"{push.provider} push by {push.pusher or 'unknown'}" + (
        f", delivery {push.delivery}" if push.delivery else ""
    )
    try:
        trigger_dag(
            TRAIN_DAG_ID,
            run_id=run_id,
            conf=conf,
            triggered_by=DagRunTriggeredByType.REST_API,
            triggering_user_name=TRIGGERING_USER,
            note=note,
        )
    except (DagRunAlreadyExists, IntegrityError):
        return False
    except DagNotFound:
        raise WebhookError(503, f"{TRAIN_DAG_ID} is not parsed yet: try again in a minute") from None
    return True


def _make_way_while_queued(run_id: str, deadline: float) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    while time.monotonic() < deadline:
        time.sleep(1.0)
        try:
            with create_session() as session:
                state = session.scalar(
                    select(DagRun.state).where(DagRun.dag_id == TRAIN_DAG_ID, DagRun.run_id == run_id)
                )
            if state != DagRunState.QUEUED:
                return
            yield_idle_watchers(run_id)
        except Exception:  # a busy database: the next look may succeed, and the run starts in time anyway
            log.warning("webhook: could not look for idle watchers for %s", run_id, exc_info=True)


def _claimed_anything(run_id: str, conf: dict) -> bool:
    """Whether the run's sensor claimed a commit (then it must run on, whatever its state says)."""
    try:
        remote = gitops.remote_from_connection(url=conf.get("repo_url") or None)
    except gitops.GitError:  # no repository to watch: it cannot have claimed one
        return False
    return ledger.claimed_by(remote.display_url, run_id) is not None


def yield_idle_watchers(except_run_id: str) -> list[str]:
    """Skip the sensors of runs waiting for a push that are not poking now; returns those runs' ids."""
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import and_, select

    not_poking = (
        TaskInstanceState.UP_FOR_RESCHEDULE,
        TaskInstanceState.UP_FOR_RETRY,
        TaskInstanceState.SCHEDULED,
        TaskInstanceState.QUEUED,
    )
    with create_session() as session:
        waiting = session.execute(
            select(TaskInstance.run_id, DagRun.conf)
            .join(DagRun, and_(DagRun.dag_id == TaskInstance.dag_id, DagRun.run_id == TaskInstance.run_id))
            .where(
                TaskInstance.dag_id == TRAIN_DAG_ID,
                TaskInstance.task_id == SENSOR_TASK_ID,
                TaskInstance.state.in_(not_poking),
                DagRun.state == DagRunState.RUNNING,
                TaskInstance.run_id != except_run_id,
            )
        ).all()
        idle = [
            run_id
            for run_id, conf in waiting
            if not (conf or {}).get("commit") and not _claimed_anything(run_id, conf or {})
        ]
        if not idle:
            return []
        dag = DBDagBag().get_latest_version_of_dag(TRAIN_DAG_ID, session=session)
        if dag is None:
            return []
        for run_id in idle:
            # The tasks after the sensor too: those of a run that took no commit have nothing to do, and
            # one of them still to run (finish_pipeline) would keep the run, and the webhook's, waiting.
            dag.set_task_instance_state(
                task_id=SENSOR_TASK_ID,
                run_id=run_id,
                state=TaskInstanceState.SKIPPED,
                downstream=True,
                commit=True,
                session=session,
            )
    log.info("webhook: idle watcher runs %s made way for %s", idle, except_run_id)
    return idle
