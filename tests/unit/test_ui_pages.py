"""The pipeline, pipelines and registry pages from real record files: what the leaderboard says, what the
charts draw, what a running attempt shows, and that files a container wrote cannot make a page read
anything else.

The pages are rendered by the plugin's own app, mounted as Airflow mounts it; the auth manager's check is
replaced by a fixed user here (``test_ui_app.py`` tests access through Airflow's real API server app).
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pushtrain import pipeline
from pushtrain.registry import ModelRegistry
from pushtrain.runner import contract
from pushtrain.ui import app as ui_app
from pushtrain.ui import records, svg

ORIGIN_RUN = "manual__2026-11-30T10:00:00+00:00"
SECRET = "TOP-SECRET-CONTENT-7f3a"
DIFF = '--- a/model.py\n+++ b/model.py\n@@ -1 +1 @@\n-HPARAMS = {"epochs": 1}\n+HPARAMS = {"epochs": 4}\n'


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def history(epochs: int, final: float) -> list[dict]:
    return [
        {
            "epoch": e,
            "accuracy": final * e / epochs,
            "val_accuracy": final * e / epochs - 0.01,
            "loss": 1.0 / e,
            "val_loss": 1.2 / e,
            "seconds": 0.5,
        }
        for e in range(1, epochs + 1)
    ]


def write_metrics(pipeline_id: str, attempt: int, epochs: list[dict]) -> None:
    out = pipeline.output_dir(pipeline_id, attempt)
    out.mkdir(parents=True, exist_ok=True)
    contract.write_json_atomic(out / contract.METRICS_FILE, {"history": epochs})


@pytest.fixture
def searched(data_dir: Path, attempts) -> pipeline.Pipeline:
    """A pipeline of four attempts: below target, met, failed, and one still training (epoch 2 of 8)."""
    # The id train_on_push gives the pipeline of ORIGIN_RUN, so the run's tab can find it.
    attempts.pipeline_id = pipeline_id = pipeline.pipeline_id_for("0123abcd" * 5, ORIGIN_RUN)
    run = pipeline.Pipeline(
        pipeline_id=pipeline_id,
        repo_url="https://github.com/team/digits.git",
        branch="main",
        commit="0123abcd" * 5,
        author_name="Dana",
        author_email="dana@example.com",
        commit_message="Weak CNN\n\nbody",
        kind="cnn",
        config=pipeline.PipelineConfig(target=0.9, dataset="digits"),
        origin_dag_run_id=ORIGIN_RUN,
        model_name="digits",
    )
    run.save()
    attempts.evaluated(1, 0.5, hparams={"epochs": 2, "filters": 2}, train_seconds=4.0).save()
    second = attempts.evaluated(
        2, 0.95, hparams={"epochs": 4, "filters": 8}, train_seconds=6.0, warm_start_from=1
    )
    scored = second.evaluation.changed(
        class_names=["0", "1", "2"], confusion_matrix=[[10, 1, 0], [2, 8, 1], [0, 0, 12]]
    )
    second.changed(
        tweak_updates={"epochs": 4, "filters": 8},
        based_on_attempt=1,
        tweak_diff=DIFF,
        container_restarts=1,
        evaluation=scored,
    ).save()
    attempts.failed(
        3,
        "the model could not be built: negative dimension",
        hparams={"epochs": 4, "filters": 8, "conv_blocks": 4},
    ).changed(tweak_updates={"conv_blocks": 4}, based_on_attempt=2).save()
    pipeline.Attempt(
        pipeline_id=pipeline_id,
        attempt=4,
        status="prepared",
        repo_url=run.repo_url,
        commit=run.commit,
        kind="cnn",
        model_file="model.py",
        hparams={"epochs": 8, "filters": 8},
        tweak_updates={"epochs": 8},
        based_on_attempt=2,
    ).save()
    write_metrics(pipeline_id, 1, history(2, 0.5))
    write_metrics(pipeline_id, 2, history(4, 0.95))
    progress = pipeline.output_dir(pipeline_id, 4)
    progress.mkdir(parents=True)
    (progress / contract.PROGRESS_FILE).write_text(
        "[pushtrain] training cnn on 1438 images\n"
        "[pushtrain] epoch 1/8 accuracy=0.4000 loss=1.5000 val_accuracy=0.3500 val_loss=1.6000 seconds=0.50\n"
        "[pushtrain] epoch 2/8 accuracy=0.6000 loss=1.1000 val_accuracy=0.5500 val_loss=1.2000 seconds=0.50\n"
    )
    return run


@pytest.fixture
def client() -> TestClient:
    pages = ui_app.create_app()
    pages.dependency_overrides[ui_app.pipeline_reader] = lambda: "reader"
    pages.dependency_overrides[ui_app.run_reader] = lambda: "reader"
    root = FastAPI()
    root.mount("/pushtrain", pages)
    return TestClient(root, headers={"Accept": "text/html"})


class Cells(HTMLParser):
    """The leaderboard as {attempt: {field: text}}, and the charts as {name: data-points}."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, dict[str, str]] = {}
        self.charts: dict[str, int] = {}
        self._row: int | None = None
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if tag == "tr" and "data-attempt" in attributes:
            self._row = int(attributes["data-attempt"])
            self.rows[self._row] = {"state": attributes["data-status"]}
        elif tag == "td" and self._row is not None and "data-field" in attributes:
            self._field = attributes["data-field"]
            self.rows[self._row][self._field] = ""
        elif tag == "svg" and "data-chart" in attributes:
            self.charts[attributes["data-chart"]] = int(attributes["data-points"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._field = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._field:
            self.rows[self._row][self._field] += data


def parsed(html: str) -> Cells:
    cells = Cells()
    cells.feed(html)
    return cells


def test_the_leaderboard_says_what_each_attempt_record_says(searched, client) -> None:
    response = client.get(f"/pushtrain/pipelines/{searched.pipeline_id}")

    assert response.status_code == 200
    rows = parsed(response.text).rows
    assert {n: row["state"] for n, row in rows.items()} == {1: "below", 2: "met", 3: "failed", 4: "running"}
    for number in (1, 2):
        record = pipeline.Attempt.load(searched.pipeline_id, number)
        assert rows[number]["accuracy"].split()[0] == f"{record.accuracy:.4f}"
        assert rows[number]["f1"] == f"{record.evaluation.f1:.4f}"
        assert rows[number]["train_seconds"] == f"{record.timings.train_seconds:.1f}"
    assert "< 0.9000" in rows[1]["accuracy"] and "≥ 0.9000" in rows[2]["accuracy"]
    assert rows[2]["restarts"] == "1"
    assert rows[2]["warm_start"].startswith("continued attempt 1")
    assert rows[2]["move"] == "epochs 2 -> 4, filters 2 -> 8 (from attempt 1)"
    assert rows[3]["move"] == "conv_blocks ? -> 4 (from attempt 2)"
    assert "negative dimension" in rows[3]["status"]
    assert "training: epoch 2 of 8" in rows[4]["status"]
    assert rows[1]["move"] == "as committed"


def test_every_chart_draws_the_records_values(searched, client) -> None:
    page = client.get(f"/pushtrain/pipelines/{searched.pipeline_id}").text

    charts = parsed(page).charts
    # Bars: the three judged attempts (the running one has none yet); over training: the two evaluated.
    assert charts["accuracy-per-attempt"] == 3
    assert charts["accuracy-over-training"] == 2 + 2  # attempts and the best-so-far line
    # Learning curves: 2 + 4 finished epochs and the running attempt's 2, training and validation each.
    assert charts["learning-curves-accuracy"] == 2 * (2 + 4 + 2)
    assert charts["learning-curves-loss"] == 2 * (2 + 4 + 2)
    assert charts["confusion-matrix"] == 9
    assert 'data-value="0.9"' in page  # the target line
    assert "<title>#2 validation: 4, 0.94</title>" in page
    assert 'data-count="12"' in page


def test_diffs_and_the_running_attempts_epochs_are_shown(searched, client) -> None:
    page = client.get(f"/pushtrain/pipelines/{searched.pipeline_id}").text

    assert '<span class="add">+HPARAMS = {&#34;epochs&#34;: 4}</span>' in page
    assert '<span class="del">-HPARAMS = {&#34;epochs&#34;: 1}</span>' in page
    assert 'data-live-url="/pushtrain/pipelines/' in page
    live = re.search(r'<div class="live-attempt" data-attempt="4">(.*?)</div>', page, re.S)
    assert live and 'data-epoch="2"' in live[1] and "0.5500" in live[1]


def test_live_polling_returns_the_body_and_says_when_the_pipeline_ended(searched, client) -> None:
    running = client.get(f"/pushtrain/pipelines/{searched.pipeline_id}/live")
    assert running.headers["X-Pushtrain-Live"] == "true"
    assert "<html" not in running.text and 'id="leaderboard"' in running.text

    pipeline.Summary(
        pipeline_id=searched.pipeline_id,
        outcome="met",
        reason="accuracy 0.95 >= target 0.90",
        ended_after_attempt=2,
    ).save()
    ended = client.get(f"/pushtrain/pipelines/{searched.pipeline_id}/live")
    assert ended.headers["X-Pushtrain-Live"] == "false"
    assert "Ended after attempt 2: accuracy 0.95" in ended.text
    # The prepared attempt 4 never finished before the pipeline ended: it is no longer shown as running.
    assert parsed(ended.text).rows[4]["state"] == "failed"
    assert "data-live-url" not in client.get(f"/pushtrain/pipelines/{searched.pipeline_id}").text


def test_a_dag_run_leads_to_its_pipeline(searched, client) -> None:
    first = client.get(f"/pushtrain/runs/train_on_push/{ORIGIN_RUN}", follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"] == f"/pushtrain/pipelines/{searched.pipeline_id}"

    retrain = client.get(
        f"/pushtrain/runs/tweak_and_retrain/pushtrain__{searched.pipeline_id}__attempt-2",
        follow_redirects=False,
    )
    assert retrain.headers["location"] == f"/pushtrain/pipelines/{searched.pipeline_id}"

    waiting = client.get("/pushtrain/runs/train_on_push/scheduled__2026-11-30T10:05:00+00:00")
    assert waiting.status_code == 200 and "has not started a pipeline yet" in waiting.text
    other = client.get("/pushtrain/runs/container_health/scheduled__2026-11-30T10:05:00+00:00")
    assert other.status_code == 200 and "container_health runs train no models" in other.text


def test_the_json_of_a_pipeline_carries_the_records(searched, client) -> None:
    document = client.get(f"/pushtrain/api/pipelines/{searched.pipeline_id}").json()

    assert document["state"] == "running" and document["best_attempt"] == 2
    assert [a["status"] for a in document["attempts"]] == ["below", "met", "failed", "running"]
    assert document["attempts"][1]["record"]["evaluation"]["accuracy"] == 0.95
    assert document["confusion"]["matrix"][2] == [0, 0, 12]
    listed = client.get("/pushtrain/api/pipelines").json()
    assert [(p["pipeline_id"], p["attempts"], p["best_accuracy"]) for p in listed] == [
        (searched.pipeline_id, 4, 0.95)
    ]


def test_files_a_container_wrote_are_not_followed_out_of_the_attempt(searched, client, tmp_path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"history": [{"epoch": 1, "accuracy": 0.123456}], "note": SECRET}))
    log = tmp_path / "secret.log"
    log.write_text(f"epoch 1/1 accuracy=0.777777 note={SECRET}\n")
    output = pipeline.output_dir(searched.pipeline_id, 4)
    (output / contract.PROGRESS_FILE).unlink()
    (output / contract.PROGRESS_FILE).symlink_to(log)
    metrics = pipeline.output_dir(searched.pipeline_id, 1) / contract.METRICS_FILE
    metrics.unlink()
    metrics.symlink_to(secret)
    (pipeline.output_dir(searched.pipeline_id, 2) / contract.METRICS_FILE).write_bytes(
        b" " * (records.MAX_CONTAINER_FILE_BYTES + 1)
    )

    page = client.get(f"/pushtrain/pipelines/{searched.pipeline_id}").text
    document = client.get(f"/pushtrain/api/pipelines/{searched.pipeline_id}").text

    for text in (page, document):
        assert SECRET not in text and "0.123456" not in text and "0.777777" not in text
    # Attempts 1 and 2 lost their curves (a link, an oversized file); the running attempt its epochs.
    assert parsed(page).charts["learning-curves-accuracy"] == 0


def test_a_long_progress_log_is_read_from_its_end(data_dir, attempts) -> None:
    out = pipeline.output_dir(attempts.pipeline_id, 1)
    out.mkdir(parents=True)
    lines = [f"[pushtrain] epoch {n}/5000 accuracy=0.5 loss=1.0 seconds=0.01" for n in range(1, 5001)]
    (out / contract.PROGRESS_FILE).write_text("noise " * 200_000 + "\n" + "\n".join(lines) + "\n")

    epochs, total, complete = records.attempt_history(attempts.pipeline_id, 1)

    assert total == 5000 and not complete
    assert epochs[-1].epoch == 5000 and epochs[-1].scores == {"accuracy": 0.5, "loss": 1.0}


def test_progress_lines_of_a_resumed_container_keep_the_latest_epoch() -> None:
    epochs, total = records.parse_progress(
        "[pushtrain] epoch 1/3 accuracy=0.2 loss=2.0 seconds=0.1\n"
        "[pushtrain] resuming from checkpoint at epoch 1/3\n"
        "[pushtrain] epoch 2/3 accuracy=0.4 loss=nan seconds=0.1\n"
        "[pushtrain] epoch 2/3 accuracy=0.5 loss=1.0 seconds=0.1\n"
        "user code printed epoch 9/9 accuracy=1.0\n"
    )

    assert total == 3
    assert [(e.epoch, e.scores) for e in epochs] == [
        (1, {"accuracy": 0.2, "loss": 2.0}),
        (2, {"accuracy": 0.5, "loss": 1.0}),
    ]


@pytest.mark.parametrize(
    ("repo_url", "expected"),
    [
        ("https://github.com/team/model.git", "https://github.com/team/model/commit/{sha}"),
        ("git@github.com:team/model.git", "https://github.com/team/model/commit/{sha}"),
        ("https://gitlab.com/group/sub/model", "https://gitlab.com/group/sub/model/-/commit/{sha}"),
        ("ssh://git@codeberg.org/team/model.git", "https://codeberg.org/team/model/commit/{sha}"),
        ("https://token:x@github.com/team/model.git", "https://github.com/team/model/commit/{sha}"),
        ("/srv/git/model.git", None),
        ("https://git.internal.example/team/model.git", None),
        ("javascript:alert(1)//github.com/x/y", None),
    ],
)
def test_commits_link_to_known_web_hosts_only(repo_url: str, expected: str | None) -> None:
    sha = "0123abcd" * 5
    assert records.commit_url(repo_url, sha) == (expected.format(sha=sha) if expected else None)


def test_the_registry_page_lists_versions_with_their_lineage_and_pointer(searched, client, tmp_path) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "model.joblib").write_bytes(b"model bytes")
    record = pipeline.Attempt.load(searched.pipeline_id, 2)
    registry = ModelRegistry(pipeline.settings.registry_dir())
    version = registry.register(
        "digits",
        artifact,
        record.evaluation.model_dump(),
        record.lineage(searched),
        pipeline_run_id=searched.pipeline_id,
    )
    registry.promote_if_not_worse("digits", version)
    registry.set_tag("digits", version, "model_tests", "passed")

    page = client.get("/pushtrain/registry").text
    models = client.get("/pushtrain/api/registry").json()

    assert [(m["name"], m["aliases"]) for m in models] == [("digits", {"champion": 1})]
    assert [(move["alias"], move["from"], move["to"]) for move in models[0]["history"]] == [
        ("champion", None, 1)
    ]
    assert models[0]["versions"][0]["scores"]["accuracy"] == 0.95
    assert models[0]["versions"][0]["aliases"] == ["champion"]
    assert 'data-version="1"' in page and '<span class="badge met">champion</span>' in page
    assert "model_tests=passed" in page and 'data-alias="champion"' in page and "Not served." in page
    assert "<code>0123abcd</code>" in page and "/srv/git/models.git" in page  # a local repository: no link
    assert "digits v1" in page  # the data set and its split version
    assert f'href="/pushtrain/pipelines/{searched.pipeline_id}"' in page
    assert f"/dags/tweak_and_retrain/runs/pushtrain__{searched.pipeline_id}__attempt-2" in page


def test_the_pipelines_list_and_empty_states(data_dir, client) -> None:
    assert "No pipeline yet" in client.get("/pushtrain/pipelines").text
    assert "No model registered yet" in client.get("/pushtrain/registry").text
    assert client.get("/pushtrain/pipelines/0123abcd-00000000").status_code == 404


def test_charts_escape_text_and_say_when_there_is_nothing_to_draw() -> None:
    chart = svg.line_chart(
        "c", "<script>", [svg.Series("a<b", [(1, 0.5), (2, 0.75)])], x_label="x&y", y_label="y"
    )
    assert "<script>" not in chart and "&lt;script&gt;" in chart and "a&lt;b" in chart
    assert chart.count('class="point"') == 2
    empty = svg.line_chart("d", "title", [], x_label="x", y_label="y", empty_message="nothing yet")
    assert 'data-points="0"' in empty and "nothing yet" in empty
    assert svg.nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert svg.nice_ticks(3.0, 47.0)[0] <= 3.0 and svg.nice_ticks(3.0, 47.0)[-1] >= 47.0
