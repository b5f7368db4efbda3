"""The webhook and the pages against a real Airflow standalone, and the pages in a real browser.

One small pipeline (a scikit-learn linear model on digits: seconds per attempt) is started by a signed push
to the webhook. Then headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium)
logs in to Airflow, opens that pipeline's DAG run, clicks its "Training attempts" tab and checks the
leaderboard against the attempt records and that every chart was drawn. Screenshots, and Airflow's log of the
run, go to ``data/test-output/ui-browser/`` in the checkout (git-ignored; ``PUSHTRAIN_TEST_OUTPUT`` moves it),
where they outlive pytest's temporary directories, for a person to look at.

The watched repository (``git_default``) is another, idle one: the pushed repository is listed in the
``pushtrain_webhook`` connection, so only the webhook can start its runs, and the idle watcher of
``git_default`` must make way for them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pushtrain import datasets, images, ledger, pipeline, settings
from pushtrain.demo import commit_and_push, make_model_repo, wait_for_pipeline
from pushtrain.mailsink import MailSink
from pushtrain.standalone import EmbeddedAirflow
from pushtrain.tweak import apply_hparams
from pushtrain.ui import starter
from pushtrain.ui.webhook import deliver_push, repository_key

pytestmark = pytest.mark.slow
SECRET = secrets.token_hex(20)
DAG_IDS = ["train_on_push", "tweak_and_retrain", "container_health"]
PIPELINE_TIMEOUT = 900
OUTPUT_DIR = (
    Path(os.environ.get("PUSHTRAIN_TEST_OUTPUT") or settings.PROJECT_ROOT / "data" / "test-output")
    / "ui-browser"
)
CHARTS = (
    "accuracy-per-attempt",
    "accuracy-over-training",
    "learning-curves-accuracy",
    "learning-curves-loss",
    "confusion-matrix",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Rest:
    """Airflow's REST API with a token of the admin user."""

    def __init__(self, airflow: EmbeddedAirflow) -> None:
        self.base = airflow.url
        request = urllib.request.Request(
            f"{self.base}/auth/token",
            method="POST",
            data=json.dumps({"username": "admin", "password": airflow.admin_password()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            self.token = json.load(response)["access_token"]

    def get(self, path: str) -> dict:
        request = urllib.request.Request(
            f"{self.base}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker):
    images.ensure_image("sklearn")  # the only image a linear model needs
    root = tmp_path_factory.mktemp("ui")
    data_dir = root / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUSHTRAIN_DATA_DIR", str(data_dir))
        datasets.ensure_dataset("digits")
        idle_bare, _ = make_model_repo(root / "idle", template="knn_sklearn.py", name="idle-repo")
        bare, work = make_model_repo(
            root / "pushed",
            template="linear_sklearn.py",
            name="linear-repo",
            config={"dataset": "digits", "target": 0.91, "max_attempts": 3},
        )
        model = work / "model.py"
        model.write_text(apply_hparams(model.read_text(), {"epochs": 3}))  # a few epochs: learning curves
        smtp_port = free_port()
        webhook_connection = {
            "conn_type": "generic",
            "password": SECRET,
            "extra": {"repositories": [str(bare)]},
        }
        airflow = EmbeddedAirflow(
            home=root / "airflow",
            data_dir=data_dir,
            repo_url=str(idle_bare),
            smtp_port=smtp_port,
            port=free_port(),
            extra_env={"AIRFLOW_CONN_PUSHTRAIN_WEBHOOK": json.dumps(webhook_connection)},
        )
        with MailSink(root / "mail", port=smtp_port):
            airflow.start(root / "standalone.log")
            try:
                airflow.wait_until_healthy(timeout=420)  # the machine may be busy with other suites
                airflow.wait_for_dags(DAG_IDS)
                airflow.unpause(*DAG_IDS)
                yield {
                    "airflow": airflow,
                    "rest": Rest(airflow),
                    "bare": bare,
                    "work": work,
                    "root": root,
                    "hook": f"{airflow.url}/pushtrain/hooks/git",
                    "data_dir": data_dir,
                }
            finally:
                airflow.stop()
                OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / "standalone.log", OUTPUT_DIR / "standalone.log")


@pytest.fixture(scope="module")
def delivered(stack):
    """The push of the pipeline every test here looks at, delivered once with a valid signature."""
    sha = commit_and_push(stack["work"], "Linear model, three epochs")
    sent = time.monotonic()
    status, answer = deliver_push(stack["hook"], SECRET, str(stack["bare"]), sha)
    return {
        "sha": sha,
        "sent": sent,
        "status": status,
        "answer": answer,
        "answered_after": time.monotonic() - sent,
    }


def test_a_signed_push_starts_its_run_within_seconds(stack, delivered) -> None:
    assert delivered["status"] == 202, delivered["answer"]
    assert delivered["answer"]["status"] == "started"
    run_id = delivered["answer"]["run_id"]
    assert run_id.endswith(f"__{delivered['sha']}")
    assert delivered["answered_after"] < 10

    run = wait_until(
        lambda: next(
            (
                r
                for r in stack["rest"].runs("train_on_push")
                if r["dag_run_id"] == run_id and r["state"] == "running"
            ),
            None,
        ),
        180,
        "the webhook's run to start",
    )
    started_after = time.monotonic() - delivered["sent"]
    print(f"webhook run {run_id} running {started_after:.1f}s after the push was delivered")
    assert run["conf"] == {"commit": delivered["sha"], "branch": "main", "repo_url": str(stack["bare"])}
    assert run["triggered_by"] == "rest_api"
    # Well before the idle watcher of git_default would have ended on its own (its 60 s interval, plus the
    # task starts of a busy machine): it made way. bench_pipeline_loop.py measures the latency itself.
    assert started_after < 120
    # The commit is claimed for this run, so no sensor can take it again.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUSHTRAIN_DATA_DIR", str(stack["data_dir"]))
        assert ledger.read(str(stack["bare"]), delivered["sha"])["run_id"] == run_id


def test_a_redelivery_starts_nothing_new(stack, delivered) -> None:
    status, answer = deliver_push(stack["hook"], SECRET, str(stack["bare"]), delivered["sha"])

    assert (status, answer["status"]) == (200, "already_started")
    assert answer["run_id"] == delivered["answer"]["run_id"]
    ours = [r for r in stack["rest"].runs("train_on_push") if r["dag_run_id"].endswith(delivered["sha"])]
    assert len(ours) == 1


def test_a_bad_signature_starts_nothing(stack, delivered) -> None:
    sha = "1" * 40
    repository = starter.WatchedRepository(
        str(stack["bare"]), str(stack["bare"]), repository_key(str(stack["bare"]))
    )

    status, answer = deliver_push(
        stack["hook"], SECRET, str(stack["bare"]), sha, signature="sha256=" + "0" * 64
    )
    forged, _ = deliver_push(stack["hook"], "a-guessed-secret-0123456789", str(stack["bare"]), sha)

    assert (status, answer["status"], forged) == (401, "rejected", 401)
    time.sleep(3)
    assert not [
        r
        for r in stack["rest"].runs("train_on_push")
        if r["dag_run_id"] == starter.run_id_for(repository, sha)
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUSHTRAIN_DATA_DIR", str(stack["data_dir"]))
        assert ledger.read(str(stack["bare"]), sha) is None


@pytest.fixture(scope="module")
def finished(stack, delivered) -> pipeline.Summary:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUSHTRAIN_DATA_DIR", str(stack["data_dir"]))
        summary = wait_for_pipeline(delivered["sha"], PIPELINE_TIMEOUT)
        # Only the webhook's run trained this commit: one pipeline, started by that run.
        folders = list(settings.runs_dir().glob(f"{delivered['sha'][:8]}-*"))
        assert [f.name for f in folders] == [summary.pipeline_id]
        assert pipeline.Pipeline.load(summary.pipeline_id).origin_dag_run_id == delivered["answer"]["run_id"]
        return summary


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail(
            "the browser test needs Debian's chromium and chromium-driver: `make test-deps` installs them"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1440,1000",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    session.set_page_load_timeout(60)
    yield session
    session.quit()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    shutil.rmtree(OUTPUT_DIR, ignore_errors=True)
    OUTPUT_DIR.mkdir(parents=True)
    print(f"screenshots in {OUTPUT_DIR}")
    return OUTPUT_DIR


def log_in(browser, airflow: EmbeddedAirflow) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{airflow.url}/")
    wait = WebDriverWait(browser, 60)
    password = wait.until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "input[type=password]"))
    )
    username = browser.find_element(By.CSS_SELECTOR, "input:not([type=password]):not([type=hidden])")
    username.send_keys("admin")
    password.send_keys(airflow.admin_password(), Keys.ENTER)
    wait.until(lambda page: "/auth/login" not in page.current_url and page.get_cookie("_token"))


def test_the_pipeline_page_of_a_dag_run_in_a_real_browser(
    stack, delivered, finished, browser, screenshots
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    airflow, run_id = stack["airflow"], delivered["answer"]["run_id"]
    log_in(browser, airflow)
    wait = WebDriverWait(browser, 60)
    browser.set_window_size(1440, 1500)  # tall enough to show the plots in the tab's frame
    browser.get(f"{airflow.url}/dags/train_on_push/runs/{run_id}")
    tab = wait.until(
        expected_conditions.element_to_be_clickable(
            (By.XPATH, "//*[self::a or self::button][normalize-space()='Training attempts']")
        )
    )
    tab.click()
    frame = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
    wait.until(lambda page: "/plugin/" in page.current_url)
    time.sleep(1)
    browser.save_screenshot(str(screenshots / "1-dag-run-tab.png"))

    browser.switch_to.frame(frame)
    wait.until(expected_conditions.presence_of_element_located((By.ID, "leaderboard")))
    assert f"/pushtrain/pipelines/{finished.pipeline_id}" in browser.execute_script(
        "return location.pathname"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUSHTRAIN_DATA_DIR", str(stack["data_dir"]))
        records = [
            pipeline.Attempt.load(finished.pipeline_id, n) for n in range(1, finished.ended_after_attempt + 1)
        ]
    assert any(r.accuracy is not None for r in records), f"no attempt was evaluated: {finished.reason}"
    rows = browser.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")
    assert [int(row.get_attribute("data-attempt")) for row in rows] == [r.attempt for r in records]
    for row, record in zip(rows, records, strict=True):
        cell = {
            field: row.find_element(By.CSS_SELECTOR, f"[data-field={field}]").text
            for field in ("accuracy", "precision", "recall", "f1", "train_seconds", "restarts")
        }
        if record.accuracy is None:  # failed, or a task of it failed before it was judged
            assert row.get_attribute("data-status") == "failed", (finished.reason, record.reason)
            continue
        assert cell["accuracy"].split()[0] == f"{record.accuracy:.4f}"
        assert cell["precision"] == f"{record.evaluation.precision:.4f}"
        assert cell["recall"] == f"{record.evaluation.recall:.4f}"
        assert cell["f1"] == f"{record.evaluation.f1:.4f}"
        assert cell["train_seconds"] == f"{record.timings.train_seconds:.1f}"
        assert cell["restarts"] == str(record.container_restarts)
        assert row.get_attribute("data-status") in ("met", "below")

    # What each chart must draw, counted from the records: bars of judged attempts, evaluated attempts (and
    # the best-so-far line), each epoch's training and validation score (scikit-learn reports no loss), and
    # the best attempt's confusion matrix.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUSHTRAIN_DATA_DIR", str(stack["data_dir"]))
        history = [
            epoch
            for record in records
            if record.status == "evaluated"
            for epoch in json.loads(
                (pipeline.output_dir(finished.pipeline_id, record.attempt) / "metrics.json").read_text()
            )["history"]
        ]
    evaluated = [r for r in records if r.accuracy is not None]
    best = max(evaluated, key=lambda r: (r.accuracy, -r.attempt))
    expected = {
        "accuracy-per-attempt": len(records),
        "accuracy-over-training": 2 * len(evaluated),
        "learning-curves-accuracy": sum(("accuracy" in e) + ("val_accuracy" in e) for e in history),
        "learning-curves-loss": sum(("loss" in e) + ("val_loss" in e) for e in history),
        "confusion-matrix": len(best.evaluation.confusion_matrix or []) ** 2,
    }
    assert expected["accuracy-per-attempt"] and expected["learning-curves-accuracy"]
    for name in CHARTS:
        chart = browser.find_element(By.CSS_SELECTOR, f"svg[data-chart='{name}']")
        box = browser.execute_script(
            "const b = arguments[0].getBoundingClientRect(); return [b.width, b.height];", chart
        )
        assert box[0] > 100 and box[1] > 50, (name, box)
        drawn = chart.find_elements(By.CSS_SELECTOR, ".point, .bar")
        assert (int(chart.get_attribute("data-points")), len(drawn)) == (expected[name], expected[name]), name
        if not expected[name]:  # nothing to draw is said, not left blank
            assert chart.find_element(By.CSS_SELECTOR, ".chart-empty").text, name
    assert browser.find_element(By.ID, "outcome").text.startswith(
        f"Ended after attempt {finished.ended_after_attempt}"
    )

    # The page on its own, tall enough to hold all of it.
    page_url = browser.execute_script("return location.href")
    browser.switch_to.default_content()
    browser.set_window_size(1440, 3000)
    browser.get(page_url)
    wait.until(expected_conditions.presence_of_element_located((By.ID, "plots")))
    browser.save_screenshot(str(screenshots / "2-pipeline-page.png"))
    browser.get(f"{airflow.url}/pushtrain/pipelines")
    assert finished.pipeline_id in browser.page_source
    browser.save_screenshot(str(screenshots / "3-pipelines.png"))
    browser.get(f"{airflow.url}/pushtrain/registry")
    if finished.outcome == "met":
        assert browser.find_elements(By.CSS_SELECTOR, "tr[data-version='1']")
    browser.save_screenshot(str(screenshots / "4-registry.png"))
    browser.set_window_size(1440, 1000)
    for picture in ("1-dag-run-tab.png", "2-pipeline-page.png", "3-pipelines.png", "4-registry.png"):
        assert (screenshots / picture).stat().st_size > 10_000


def test_without_a_session_the_pages_are_refused(stack, finished) -> None:
    for path in (
        "/pushtrain/pipelines",
        f"/pushtrain/api/pipelines/{finished.pipeline_id}",
        "/pushtrain/registry",
    ):
        try:
            urllib.request.urlopen(f"{stack['airflow'].url}{path}", timeout=30)
        except urllib.error.HTTPError as error:
            assert error.code == 401, path
        else:
            raise AssertionError(f"{path} answered without a session")
