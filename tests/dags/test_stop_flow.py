"""The run of ``tweak_and_retrain`` whose strategy has nothing left to try, executed by Airflow itself
(``dag.test()``: every task in process, real trigger rules, XCom and callbacks, a real SMTP sink).

It needs no container: the stop happens before training. Attempts 1 and 2 are what their containers would
have left (``metrics.json``) judged by the pipeline's own ``judge_attempt``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from pushtrain import datasets, gitops, pipeline, steps, tweak
from pushtrain.demo import commit_and_push, make_model_repo
from pushtrain.mailsink import MailSink
from pushtrain.runner import contract

pytestmark = pytest.mark.slow  # about 30 s: the DAG run executes every task in this process
DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
# One knob of two values: after attempts 1 (uniform) and 2 (distance) there is nothing left to try.
KNN_ONE_KNOB = """HPARAMS = {"weights": "uniform"}


def build_estimator(hp):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=5, weights=hp["weights"])
"""


@pytest.fixture(scope="module")
def airflow_db() -> None:
    from airflow.utils.db import initdb

    initdb()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def judged(prepared: dict, accuracy: float) -> None:
    """Write what the training container leaves, then judge the attempt with the pipeline's own step."""
    plan = pipeline.PreparedAttempt.from_xcom(prepared, "prepare_attempt")
    hparams = tweak.read_hparams(
        (pipeline.attempt_dir(plan.pipeline_id, plan.attempt) / "code" / "model.py").read_text()
    )
    metrics = {
        "schema_version": contract.SCHEMA_VERSION,
        "kind": "knn",
        "evaluated_on": "validation",
        "accuracy": accuracy,
        "precision": accuracy,
        "recall": accuracy,
        "f1": accuracy,
        "loss": None,
        "per_class": {},
        "n_train": 48,
        "n_evaluated": 12,
        "epochs_run": 1,
        "resumed_from_epoch": 0,
        "train_seconds": 0.1,
        "history": [],
        "hparams": hparams,
        "code_sha256": "c" * 64,
        "dataset_sha256": "d" * 64,
        "versions": {},
        "finished_at": "2026-03-01T12:00:00Z",
    }
    assert contract.validate_metrics(metrics) == []
    contract.write_json_atomic(
        pipeline.output_dir(plan.pipeline_id, plan.attempt) / contract.METRICS_FILE, metrics
    )
    evaluation = pipeline.Evaluation(
        accuracy=accuracy,
        precision=accuracy,
        recall=accuracy,
        f1=accuracy,
        loss=None,
        n_evaluated=12,
        dataset_sha256="e" * 64,
        container_wall_seconds=1.0,
    ).model_dump()
    trained = {
        "status": "trained",
        "image": "pushtrain/sklearn:test",
        "image_id": "sha256:" + "1" * 64,
        "container_wall_seconds": 1.0,
        "container_restarts": 0,
    }
    steps.judge_attempt(prepared, trained, evaluation, {"dag_id": "tweak_and_retrain", "run_id": "earlier"})


def test_a_strategy_with_nothing_left_to_try_ends_the_run_as_a_normal_stop_with_its_mail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: None
) -> None:
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    bare, work = make_model_repo(
        tmp_path,
        template="knn_sklearn.py",
        name="one-knob",
        config={"dataset": "digits", "target": 0.999, "max_attempts": 6, "patience": 10},
    )
    (work / "model.py").write_text(KNN_ONE_KNOB)
    sha = commit_and_push(work, "knn with one knob")
    datasets.export_dataset(
        "digits", [([(17 * n + 3 * p) % 256 for p in range(64)], str(n % 10)) for n in range(60)]
    )
    found = {"repo_url": str(bare), "branch": "main", "commit": sha, "superseded": []}
    pipeline_id = steps.checkout_commit(found, {}, "manual__one-knob", gitops.GitRemote(url=str(bare)))[
        "pipeline_id"
    ]
    assert steps.detect_model_kind(pipeline_id) == "knn"
    judged(steps.prepare_first_attempt(pipeline_id), 0.8)
    judged(steps.prepare_tweaked_attempt(pipeline_id, 2), 0.85)
    dag = DagBag(dag_folder=str(DAGS_DIR / "tweak_and_retrain.py")).dags["tweak_and_retrain"]
    port = free_port()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": port,
                "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "pushtrain@localhost"},
            }
        ),
    )

    with MailSink(tmp_path / "mail", port=port) as sink:
        run = dag.test(run_conf={"pipeline_id": pipeline_id, "attempt": 3})
        mails = sink.messages()

    tasks = {ti.task_id: ti for ti in run.get_task_instances()}
    assert run.state == "success"
    for task_id in (
        "prepare_attempt",
        "choose_trainer",
        "nothing_left_to_try",
        "judge_attempt",
        "budget_spent",
        "report_budget_spent",
        "finish_pipeline",
    ):
        assert (tasks[task_id].state, tasks[task_id].try_number) == ("success", 1), task_id
    trainers = [task_id for task_id in tasks if task_id.startswith("train_")]
    assert trainers
    for task_id in (*trainers, "evaluate", "register_model", "trigger_retrain", "fail_if_any_step_failed"):
        assert tasks[task_id].state == "skipped", task_id
    assert not pipeline.attempt_dir(pipeline_id, 3).exists()  # nothing prepared, nothing trained
    summary = pipeline.Summary.load(pipeline_id)
    assert (summary.outcome, summary.ended_after_attempt) == ("stop", 2)
    assert "exhausted" in summary.reason and "weights" in summary.reason
    assert [mail["subject"] for mail in mails] == [
        f"[pushtrain] one-knob {sha[:8]}: target 1.00 not met, best 0.8500 after 2 attempt(s)"
    ]
    body = mails[0].get_body(("html",)).get_content()
    assert "Why it stopped: strategy default exhausted" in body
    assert body.count("<tr><td>") == 2  # the leaderboard: both attempts
    assert not (tmp_path / "data" / "workspaces" / pipeline_id).exists()  # the pipeline ended: cleaned up
