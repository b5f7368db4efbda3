"""The label-blind evaluation through the pipeline's own operators: an honest attempt is scored by the
platform, a tampering one fails for good, and neither leaves the held-out view behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException
from test_health import FIXTURES, TaskInstance, data_dir, first_attempt, recorded  # noqa: F401  (fixture)

from pushtrain import pipeline, steps
from pushtrain.operators import EvaluateAttemptOperator, TrainAttemptOperator
from pushtrain.runner import contract

TEMPLATES = Path(__file__).resolve().parents[2] / "include" / "model_templates"


def train_and_evaluate(prepared: dict, kind: str) -> tuple[dict, dict]:
    with DAG(f"blind_{kind}", schedule=None):
        train, _ = recorded(TrainAttemptOperator, task_id=f"train_{kind}", kind=kind)
        evaluate = EvaluateAttemptOperator(task_id="evaluate")
        train >> evaluate
    trained = train.execute({"ti": TaskInstance({"prepare_attempt": prepared}, train.task_id)})
    evaluation = evaluate.execute(
        {"ti": TaskInstance({"prepare_attempt": prepared, train.task_id: trained}, "evaluate")}
    )
    return trained, evaluation


def test_an_honest_attempt_is_scored_by_the_platform_from_its_predictions(
    training_images,
    data_dir,  # noqa: F811
    tmp_path,
):
    prepared = first_attempt(tmp_path / "repos", TEMPLATES / "knn_sklearn.py", "knn")
    pipeline_id = prepared["pipeline_id"]

    trained, evaluation = train_and_evaluate(prepared, "knn")

    record = json.loads(pipeline.evaluation_record_path(pipeline_id, 1).read_text())
    assert evaluation["status"] == "evaluated"
    assert evaluation["accuracy"] == record["accuracy"] > 0.5
    assert evaluation["n_evaluated"] == 359 == sum(map(sum, record["confusion_matrix"]))
    assert sum(row[i] for i, row in enumerate(record["confusion_matrix"])) == round(record["accuracy"] * 359)
    # The container left its predictions only; the view and its answer key are gone once scored.
    assert sorted(p.name for p in pipeline.evaluation_dir(pipeline_id, 1).iterdir()) == [
        contract.PREDICTIONS_FILE
    ]
    assert not pipeline.blind_view_dir(pipeline_id, 1).exists()
    # judge_attempt takes the evaluation as it came, confusion matrix included, into the attempt record.
    steps.judge_attempt(prepared, trained, evaluation, {"dag_id": "train_on_push", "run_id": "manual__t"})
    judged = pipeline.Attempt.load(pipeline_id, 1)
    assert judged.evaluation.accuracy == evaluation["accuracy"]
    assert judged.evaluation.confusion_matrix == record["confusion_matrix"]


@pytest.mark.parametrize("tamper", ["forge", "drop"])
def test_a_tampering_model_fails_its_attempt_for_good(training_images, data_dir, tmp_path, tamper):  # noqa: F811
    model = tmp_path / "model.py"
    shutil.copyfile(FIXTURES / "cheat_tamper.py", model)
    model.write_text(model.read_text().replace('"tamper": "forge"', f'"tamper": "{tamper}"'))
    prepared = first_attempt(tmp_path / "repos", model, "linear")
    pipeline_id = prepared["pipeline_id"]

    with pytest.raises(AirflowFailException, match="predictions were rejected"):
        train_and_evaluate(prepared, "linear")

    assert not pipeline.evaluation_record_path(pipeline_id, 1).exists()
    assert not pipeline.blind_view_dir(pipeline_id, 1).exists()
