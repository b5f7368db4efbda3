"""
### container_health: restart training containers that died, while their attempt is still wanted

Runs every `PUSHTRAIN_HEALTH_INTERVAL_SECONDS` (60 by default), one run at a time. For every container
labelled `io.pushtrain.role`:

- **running**: nothing to do;
- **died while its Airflow task still waits** (the task's lease in the attempt dir is fresh): restarted, and
  the runner resumes from its last checkpoint. Kills by the host or an operator use a budget of 5 restarts,
  crashes of user code during training (exit 5) or out of memory a budget of 2, with exponential backoff.
  When the budget is spent the waiting task fails with why.
- **failed in a way a restart cannot help** (syntax error, missing module or name, a builder that raises,
  an unusable model file or data set: exit 2, 3, 4, 6, 7): left alone; its task fails the attempt at once.
- **its attempt finished, or nobody waits for it any more** (finished, cancelled, marked failed): removed,
  never restarted; checkpoints of pipelines that ended are removed too.

The task log has one line per container: what was done and why.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from pushtrain import health

INTERVAL = timedelta(seconds=health.health_interval_s())
LOG = logging.getLogger(__name__)


@dag(
    dag_id="container_health",
    schedule=INTERVAL,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "pushtrain", "retries": 0},
    dagrun_timeout=INTERVAL * 3,
    doc_md=__doc__,
    tags=["pushtrain", "operations"],
)
def container_health() -> None:
    @task(task_id="heal_containers", execution_timeout=INTERVAL * 2)
    def heal_containers() -> list[dict]:
        """Restart dead containers that are still wanted; remove those nobody needs."""
        from pushtrain.sandbox import docker_client

        return health.check_containers(docker_client(), log=LOG.info)

    @task(task_id="collect_garbage")
    def collect_garbage() -> list[str]:
        """Remove checkpoints and workspaces of pipelines that ended."""
        return health.collect_garbage(log=LOG.info)

    heal_containers() >> collect_garbage()


container_health()
