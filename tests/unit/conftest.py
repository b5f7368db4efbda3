"""Attempt records for unit tests, built from the pipeline's own record types (never dicts written by hand),
so a test fails the moment a record it relies on no longer validates."""

from __future__ import annotations

from typing import Any

import pytest

from pushtrain import pipeline

PIPELINE_ID = "0123abcd-feedbeef"


class AttemptRecords:
    """Records of attempts as ``steps.judge_attempt`` completes them: evaluated, or failed."""

    def __init__(self, pipeline_id: str = PIPELINE_ID) -> None:
        self.pipeline_id = pipeline_id

    def _base(self, attempt: int, hparams: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "pipeline_id": self.pipeline_id,
            "attempt": attempt,
            "repo_url": "/srv/git/models.git",
            "commit": "0123abcd" * 5,
            "kind": "cnn",
            "model_file": "model.py",
            "hparams": {"epochs": attempt, "filters": 2 * attempt} if hparams is None else hparams,
            "dataset": pipeline.DatasetUsed(
                name="digits", split_version="v1", split={}, train_sha256="t" * 64, test_sha256="e" * 64
            ),
            "airflow": pipeline.AirflowRun(
                dag_id="tweak_and_retrain", run_id=pipeline.trigger_run_id(self.pipeline_id, attempt)
            ),
        }

    def evaluated(
        self,
        attempt: int,
        accuracy: float,
        *,
        hparams: dict[str, Any] | None = None,
        train_seconds: float = 10.0,
        warm_start_from: int | None = None,
    ) -> pipeline.Attempt:
        return pipeline.Attempt(
            **self._base(attempt, hparams),
            status="evaluated",
            warm_start_from=warm_start_from,
            training_metrics=pipeline.TrainingMetrics(
                accuracy=accuracy,
                precision=accuracy,
                recall=accuracy,
                f1=accuracy,
                loss=0.5,
                evaluated_on="validation",
                epochs_run=attempt,
                resumed_from_epoch=0,
            ),
            evaluation=pipeline.Evaluation(
                accuracy=accuracy,
                precision=accuracy,
                recall=accuracy,
                f1=accuracy,
                loss=0.5,
                n_evaluated=359,
                dataset_sha256="e" * 64,
                container_wall_seconds=3.0,
            ),
            timings=pipeline.Timings(
                train_seconds=train_seconds,
                train_container_seconds=train_seconds + 2,
                evaluate_container_seconds=3.0,
            ),
        )

    def failed(self, attempt: int, reason: str, *, hparams: dict[str, Any] | None = None) -> pipeline.Attempt:
        return pipeline.Attempt(**self._base(attempt, hparams), status="failed", reason=reason)


@pytest.fixture
def attempts() -> AttemptRecords:
    return AttemptRecords()
