"""Tests of the git side of the pipeline steps on real repositories: a bare "remote" made with the git CLI in
a tmp dir, a working clone that pushes to it, and pushtrain's own mirror under a tmp data dir. No mocks of
git and no Airflow: ``gitops.GitRemote`` is built directly (the ``git_default`` connection is not set here).

Commit times are fixed (``GIT_AUTHOR_DATE``/``GIT_COMMITTER_DATE``) so the backfill rule, "the branch head
as of the run's logical date", is tested against known instants.
"""

from __future__ import annotations

import difflib
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pushtrain import datasets, gitops, ledger, pipeline, settings, steps, strategies, tweak
from pushtrain.mail import budget_spent_mail, leaderboard_html
from pushtrain.registry import ModelRegistry
from pushtrain.runner import contract

BRANCH = "main"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # the first commit's time; the others are hours later
AUTHOR = ("Ada Lovelace", "ada@example.com")
RUN_1 = "scheduled__2026-11-23T01:46:43.967200+00:00"
RUN_2 = "scheduled__2026-11-23T01:51:43.967200+00:00"
RUN_3 = "scheduled__2026-11-23T01:56:43.967200+00:00"
MODEL = 'HPARAMS = {"epochs": 1}\n'
CNN_TOML = 'target = 0.9\ndataset = "digits"\n'


def git(cwd: Path, *args: str, when: datetime | None = None) -> str:
    """Run the git CLI with a fixed identity and no user or system configuration."""
    env = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": AUTHOR[0],
        "GIT_AUTHOR_EMAIL": AUTHOR[1],
        "GIT_COMMITTER_NAME": "CI Robot",
        "GIT_COMMITTER_EMAIL": "ci@example.com",
    }
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = when.isoformat()
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@dataclass
class Origin:
    """A bare repository (the watched remote) and a working clone that commits and pushes to it."""

    bare: Path
    work: Path
    times: dict[str, datetime] = field(default_factory=dict)

    @property
    def remote(self) -> gitops.GitRemote:
        return gitops.GitRemote(url=str(self.bare))

    def commit(self, files: dict[str, str], message: str, when: datetime, *, push: bool = True) -> str:
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(self.work, "add", "--all")
        git(self.work, "commit", "--quiet", "--allow-empty", "-m", message, when=when)
        sha = git(self.work, "rev-parse", "HEAD")
        self.times[sha] = when
        if push:
            self.push()
        return sha

    def push(self) -> None:
        git(self.work, "push", "--quiet", "origin", f"HEAD:refs/heads/{BRANCH}")

    def branches(self) -> dict[str, str]:
        out = git(self.bare, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads")
        return dict(line.split() for line in out.splitlines())


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(path))
    return path


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    bare, work = tmp_path / "models.git", tmp_path / "work"
    git(tmp_path, "init", "--quiet", "--bare", f"--initial-branch={BRANCH}", str(bare))
    git(tmp_path, "init", "--quiet", f"--initial-branch={BRANCH}", str(work))
    git(work, "remote", "add", "origin", str(bare))
    return Origin(bare, work)


def find(
    origin: Origin,
    run_id: str,
    run_type: str = "scheduled",
    when: datetime | None = None,
    commit: str | None = None,
) -> dict | None:
    return steps.find_commit_to_train(
        remote=origin.remote,
        branch=BRANCH,
        dag_run_id=run_id,
        run_type=run_type,
        data_interval_end=when,
        explicit_commit=commit,
    )


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


# ----------------------------------------------------------------------------------- find_commit_to_train


def test_live_run_claims_the_head_once(origin: Origin) -> None:
    sha = origin.commit({"model.py": MODEL}, "first model", T0)

    found = find(origin, RUN_1)

    assert found == {"repo_url": str(origin.bare), "branch": BRANCH, "commit": sha, "superseded": []}
    assert ledger.read(str(origin.bare), sha)["run_id"] == RUN_1
    assert find(origin, RUN_2) is None  # the next scheduled run waits for a new push
    assert find(origin, RUN_1) == found  # a retry of the claiming run carries on


def test_a_retried_live_run_keeps_its_commit_when_the_head_moved_on(origin: Origin) -> None:
    first = origin.commit({"model.py": MODEL}, "first model", T0)
    assert find(origin, RUN_1)["commit"] == first
    second = origin.commit({"model.py": MODEL + "# tuned\n"}, "second model", T0 + hours(1))

    assert find(origin, RUN_1)["commit"] == first  # the retry trains what it claimed; it is not lost
    assert find(origin, RUN_2)["commit"] == second


def test_live_run_on_an_empty_repository_keeps_waiting(origin: Origin) -> None:
    assert find(origin, RUN_1) is None  # nothing pushed yet


def test_live_run_on_a_branch_that_does_not_exist_fails_naming_the_ones_that_do(origin: Origin) -> None:
    origin.commit({"model.py": MODEL}, "first model", T0)
    with pytest.raises(steps.UserFacingError, match=rf"branch 'no-such-branch' does not exist .*{BRANCH}"):
        steps.find_commit_to_train(
            remote=origin.remote,
            branch="no-such-branch",
            dag_run_id=RUN_1,
            run_type="scheduled",
            data_interval_end=None,
            explicit_commit=None,
        )


def test_newest_of_several_pushes_wins_and_the_older_are_superseded(origin: Origin) -> None:
    first = origin.commit({"model.py": MODEL}, "one", T0, push=False)
    second = origin.commit({"model.py": MODEL.replace("1", "2")}, "two", T0 + hours(1), push=False)
    third = origin.commit({"model.py": MODEL.replace("1", "3")}, "three", T0 + hours(2), push=False)
    origin.push()

    found = find(origin, RUN_1)

    assert found["commit"] == third
    assert found["superseded"] == [second, first]
    assert ledger.superseded(str(origin.bare)) == sorted([first, second])
    assert not ledger.is_taken(str(origin.bare), first)
    assert not ledger.is_taken(str(origin.bare), second)


def test_a_new_push_after_the_trained_head_is_found(origin: Origin) -> None:
    first = origin.commit({"model.py": MODEL}, "one", T0)
    assert find(origin, RUN_1)["commit"] == first
    assert find(origin, RUN_2) is None

    second = origin.commit({"model.py": MODEL.replace("1", "2")}, "two", T0 + hours(1))

    found = find(origin, RUN_2)
    assert found["commit"] == second
    assert found["superseded"] == []  # the walk stops at the trained commit
    assert ledger.superseded(str(origin.bare)) == []
    assert find(origin, RUN_3) is None


def test_a_deleted_branch_is_pruned_from_the_mirror(origin: Origin) -> None:
    origin.commit({"model.py": MODEL}, "one", T0)
    git(origin.work, "push", "--quiet", "origin", "HEAD:refs/heads/feature")
    assert gitops.branch_head(gitops.fetch(origin.remote), "feature") is not None

    git(origin.work, "push", "--quiet", "origin", ":refs/heads/feature")

    assert gitops.branch_head(gitops.fetch(origin.remote), "feature") is None


@pytest.fixture
def history(origin: Origin) -> list[str]:
    """Three commits pushed one hour apart, from T0."""
    return [
        origin.commit({"model.py": MODEL.replace("1", str(n + 1))}, f"commit {n}", T0 + hours(n))
        for n in range(3)
    ]


# The DAG passes str(dag_run.run_type): in a task that is the Task SDK enum, whose str() is not its value.
BACKFILL_SPELLINGS = ["backfill", "DagRunType.BACKFILL"]


@pytest.mark.parametrize("run_type", BACKFILL_SPELLINGS)
def test_backfill_trains_the_head_as_of_its_logical_date(
    origin: Origin, history: list[str], run_type: str
) -> None:
    found = find(origin, "backfill__a", run_type, when=T0 + hours(1.5))

    assert found == {"repo_url": str(origin.bare), "branch": BRANCH, "commit": history[1], "superseded": []}
    assert ledger.read(str(origin.bare), history[1])["run_id"] == "backfill__a"


def test_backfill_of_the_sdk_run_type_enum(origin: Origin, history: list[str]) -> None:
    from airflow.sdk.api.datamodels._generated import DagRunType

    assert find(origin, "backfill__a", DagRunType.BACKFILL, when=T0 + hours(0.5))["commit"] == history[0]


def test_backfill_at_a_commit_time_takes_that_commit(origin: Origin, history: list[str]) -> None:
    assert find(origin, "backfill__a", "backfill", when=T0 + hours(2))["commit"] == history[2]


def test_backfill_of_a_commit_trained_already_is_nothing_to_train(origin: Origin, history: list[str]) -> None:
    find(origin, "backfill__a", "backfill", when=T0 + hours(1.5))

    with pytest.raises(steps.NothingToTrain, match=f"{history[1][:8]}.*trained already"):
        find(origin, "backfill__b", "backfill", when=T0 + hours(1.9))


def test_backfill_before_the_first_commit_is_nothing_to_train(origin: Origin, history: list[str]) -> None:
    with pytest.raises(steps.NothingToTrain, match="had no commit"):
        find(origin, "backfill__a", "backfill", when=T0 - hours(1))
    with pytest.raises(steps.NothingToTrain, match="had no commit"):
        find(origin, "backfill__b", "backfill", when=None)


def test_backfill_may_train_a_commit_a_live_run_superseded(origin: Origin, history: list[str]) -> None:
    assert find(origin, RUN_1)["superseded"] == [history[1], history[0]]

    assert find(origin, "backfill__a", "backfill", when=T0 + hours(1.5))["commit"] == history[1]


def test_a_live_run_does_not_treat_a_backfill_date_as_a_limit(origin: Origin, history: list[str]) -> None:
    """A scheduled (live) run always looks at the head, whatever its data interval."""
    assert find(origin, RUN_1, "scheduled", when=T0)["commit"] == history[2]


def test_explicit_commit_by_short_sha(origin: Origin, history: list[str]) -> None:
    found = find(origin, "manual__1", "manual", commit=history[0][:7])

    assert found == {"repo_url": str(origin.bare), "branch": BRANCH, "commit": history[0], "superseded": []}
    assert ledger.read(str(origin.bare), history[0])["run_id"] == "manual__1"
    # An explicit request trains even a commit another run took.
    assert find(origin, "manual__2", "manual", commit=history[0])["commit"] == history[0]


def test_unknown_explicit_commit_is_a_git_error(origin: Origin, history: list[str]) -> None:
    with pytest.raises(gitops.GitError, match="'deadbeefdead' is not in the repository"):
        find(origin, "manual__1", "manual", commit="deadbeefdead")


# ---------------------------------------------------------------------------------------- checkout_commit

PARAMS = {
    "repo_url": "",
    "branch": BRANCH,
    "commit": "",
    "target": None,
    "max_attempts": 7,
    "kind": "auto",
    "strategy": None,
}


def checkout(origin: Origin, sha: str, run_id: str = RUN_1, params: dict | None = None) -> dict:
    found = {"repo_url": str(origin.bare), "branch": BRANCH, "commit": sha, "superseded": []}
    return steps.checkout_commit(found, params or PARAMS, run_id, origin.remote)


def tree(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): p.read_text()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(directory).parts
    }


def test_checkout_commit_writes_pipeline_json_and_checks_out_exactly_that_commit(origin: Origin) -> None:
    files = {"model.py": MODEL, "pushtrain.toml": CNN_TOML, "lib/helpers.py": "X = 1\n"}
    sha = origin.commit(files, "a model\n\nwith a body", T0)
    origin.commit({"model.py": MODEL.replace("1", "2"), "later.txt": "not yet\n"}, "later", T0 + hours(1))

    result = checkout(origin, sha)

    pipeline_id = pipeline.pipeline_id_for(sha, RUN_1)
    assert result == {"pipeline_id": pipeline_id, "commit": sha}
    workspace = pipeline.workspace_dir(pipeline_id) / "repo"
    assert tree(workspace) == files
    assert git(workspace, "rev-parse", "HEAD") == sha
    document = json.loads((pipeline.pipeline_dir(pipeline_id) / "pipeline.json").read_text())
    assert (document["author_name"], document["author_email"]) == AUTHOR
    assert document["commit"] == sha and document["branch"] == BRANCH
    assert document["repo_url"] == str(origin.bare)
    assert document["commit_message"] == "a model\n\nwith a body"
    assert document["origin_dag_run_id"] == RUN_1
    assert document["model_name"] == "models"  # the repository's name
    assert document["config"]["target"] == 0.9  # pushtrain.toml
    assert document["config"]["dataset"] == "digits"
    assert document["config"]["max_attempts"] == 7  # the Param
    assert document["config"]["kind"] == "auto"


def test_a_retried_checkout_replaces_what_the_first_try_left(origin: Origin) -> None:
    sha = origin.commit({"model.py": MODEL}, "one", T0)
    result = checkout(origin, sha)
    workspace = pipeline.workspace_dir(result["pipeline_id"]) / "repo"
    (workspace / "stray.txt").write_text("left by a killed try\n")
    (workspace / "model.py").write_text("garbage\n")

    assert checkout(origin, sha) == result
    assert tree(workspace) == {"model.py": MODEL}


def test_a_bad_pushtrain_toml_is_a_user_facing_error(origin: Origin) -> None:
    sha = origin.commit({"model.py": MODEL, "pushtrain.toml": "target = 3\nepochs = 2\n"}, "bad", T0)

    with pytest.raises(steps.UserFacingError, match="epochs"):
        checkout(origin, sha)


def test_a_bad_param_is_a_user_facing_error(origin: Origin) -> None:
    sha = origin.commit({"model.py": MODEL}, "one", T0)

    with pytest.raises(steps.UserFacingError, match="max_attempts"):
        checkout(origin, sha, params={**PARAMS, "max_attempts": 0})


# ------------------------------------------------------------------------------------- detect_model_kind


def test_detect_model_kind_of_the_cnn_template(origin: Origin, templates_dir: Path) -> None:
    sha = origin.commit({"model.py": (templates_dir / "cnn_keras.py").read_text()}, "cnn", T0)
    pipeline_id = checkout(origin, sha)["pipeline_id"]

    assert steps.detect_model_kind(pipeline_id) == "cnn"

    run = pipeline.Pipeline.load(pipeline_id)
    assert run.kind == "cnn"
    assert run.detection and any("Conv2D" in line for line in run.detection)


def test_a_missing_entry_file_names_the_file_and_the_entry_key(origin: Origin, templates_dir: Path) -> None:
    files = {
        "model.py": (templates_dir / "cnn_keras.py").read_text(),
        "pushtrain.toml": 'entry = "src/net.py"\n',
    }
    pipeline_id = checkout(origin, origin.commit(files, "wrong entry", T0))["pipeline_id"]

    with pytest.raises(steps.UserFacingError, match=r"'src/net\.py'.*`entry`"):
        steps.detect_model_kind(pipeline_id)


def test_a_kind_set_in_pushtrain_toml_skips_detection(origin: Origin) -> None:
    # This file meets the contract but matches no kind (GaussianNB is no row of the kinds table): detection
    # would fail, so a pass proves it was skipped.
    model = (
        "HPARAMS = {'var_smoothing': 1e-9}\n\n\ndef build_estimator(hp):\n"
        "    from sklearn.naive_bayes import GaussianNB\n\n    return GaussianNB(**hp)\n"
    )
    files = {"model.py": model, "pushtrain.toml": 'kind = "linear"\n'}
    pipeline_id = checkout(origin, origin.commit(files, "linear by configuration", T0))["pipeline_id"]

    assert steps.detect_model_kind(pipeline_id) == "linear"
    run = pipeline.Pipeline.load(pipeline_id)
    assert run.kind == "linear"
    assert run.detection == ["kind set to linear by configuration"]


def test_an_entry_that_links_out_of_the_repository_is_refused(
    origin: Origin, tmp_path: Path, templates_dir: Path
) -> None:
    outside = tmp_path / "host-file.py"
    outside.write_text((templates_dir / "cnn_keras.py").read_text())
    (origin.work / "model.py").symlink_to(outside)
    pipeline_id = checkout(origin, origin.commit({}, "model.py is a link to a host file", T0))["pipeline_id"]

    with pytest.raises(steps.UserFacingError, match="link out of the repository"):
        steps.detect_model_kind(pipeline_id)


def test_links_in_the_repository_are_copied_as_links_not_as_host_files(
    origin: Origin, tmp_path: Path, templates_dir: Path
) -> None:
    secret = tmp_path / "worker.netrc"
    secret.write_text("machine git.example.com password TOPSECRET\n")
    (origin.work / "netrc").symlink_to(secret)
    (origin.work / "lib").mkdir()
    (origin.work / "lib" / "model.py").write_text((templates_dir / "cnn_keras.py").read_text())
    (origin.work / "model.py").symlink_to("lib/model.py")  # a link inside the repository is fine
    pipeline_id = checkout(origin, origin.commit({}, "links", T0))["pipeline_id"]
    assert steps.detect_model_kind(pipeline_id) == "cnn"

    steps.prepare_first_attempt(pipeline_id)

    code = pipeline.attempt_dir(pipeline_id, 1) / "code"
    assert (code / "netrc").is_symlink()
    assert (code / "model.py").is_symlink() and (code / "model.py").read_text().startswith('"""Keras CNN')
    for path in code.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert "TOPSECRET" not in path.read_text(), path


def test_a_file_of_no_kind_is_a_user_facing_error(origin: Origin) -> None:
    sha = origin.commit({"model.py": "HPARAMS = {'alpha': 0.1}\n"}, "no kind", T0)
    pipeline_id = checkout(origin, sha)["pipeline_id"]

    with pytest.raises(steps.UserFacingError):
        steps.detect_model_kind(pipeline_id)


# ------------------------------------------------------------------ prepare, judge, register and finish


def commented_cnn(templates_dir: Path) -> str:
    """The cnn template with an inline comment inside HPARAMS and a comment line after it."""
    source = (templates_dir / "cnn_keras.py").read_text()
    source = source.replace('    "epochs": 1,\n', '    "epochs": 1,  # start small, pushtrain grows it\n', 1)
    return source.replace("\n\ndef build_model", "\n# keep this comment\n\ndef build_model", 1)


@pytest.fixture
def digits(data_dir: Path) -> datasets.Manifest:
    """A small digits export made by the pipeline's own exporter (the real one takes seconds per test)."""
    rows = [([(17 * n + 3 * p) % 256 for p in range(64)], str(n % 10)) for n in range(60)]
    return datasets.export_dataset("digits", rows)


def trained_and_evaluated(prepared: dict, accuracy: float) -> tuple[dict, dict]:
    """What the training and evaluation tasks leave for ``judge_attempt``: ``metrics.json`` and a saved
    model in the attempt's output dir (as the runner writes them), and the two tasks' XComs."""
    plan = pipeline.PreparedAttempt.from_xcom(prepared, "prepare_attempt")
    run = pipeline.Pipeline.load(plan.pipeline_id)
    manifest = datasets.load_manifest(run.config.dataset)
    model_file = pipeline.attempt_dir(plan.pipeline_id, plan.attempt) / "code" / run.config.entry
    hparams = tweak.read_hparams(model_file.read_text())
    metrics = {
        "schema_version": contract.SCHEMA_VERSION,
        "kind": plan.kind,
        "evaluated_on": "validation",
        "accuracy": accuracy,
        "precision": accuracy,
        "recall": accuracy,
        "f1": accuracy,
        "loss": 0.4,
        "per_class": {},
        "n_train": 48,
        "n_evaluated": 12,
        "epochs_run": hparams.get("epochs", 1),
        "resumed_from_epoch": 0,
        "train_seconds": 5.0,
        "history": [],
        "hparams": hparams,
        "code_sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
        "dataset_sha256": manifest.train_sha256,
        "versions": {},
        "finished_at": "2026-03-01T12:00:00Z",
    }
    assert contract.validate_metrics(metrics) == []
    out = pipeline.output_dir(plan.pipeline_id, plan.attempt)
    contract.write_json_atomic(out / contract.METRICS_FILE, metrics)
    (out / contract.MODEL_DIR).mkdir(parents=True, exist_ok=True)
    (out / contract.MODEL_DIR / "model.keras").write_bytes(f"weights of attempt {plan.attempt}".encode())
    (out / contract.CHECKPOINT_DIR).mkdir(exist_ok=True)
    trained = {
        "status": "trained",
        "pipeline_id": plan.pipeline_id,
        "attempt": plan.attempt,
        "kind": plan.kind,
        "image": f"pushtrain/{plan.kind}:unit",
        "image_id": "sha256:" + "1" * 64,
        "container_wall_seconds": 7.0,
        "container_restarts": 0,
    }
    evaluation = pipeline.Evaluation(
        accuracy=accuracy,
        precision=accuracy,
        recall=accuracy,
        f1=accuracy,
        loss=0.4,
        n_evaluated=12,
        dataset_sha256=manifest.test_sha256,
        container_wall_seconds=2.0,
    ).model_dump()
    return trained, evaluation


def judge(prepared: dict, accuracy: float) -> pipeline.Decision:
    trained, evaluation = trained_and_evaluated(prepared, accuracy)
    airflow_run = {"dag_id": "tweak_and_retrain", "run_id": f"run-{prepared['attempt']}"}
    return pipeline.Decision.from_xcom(
        steps.judge_attempt(prepared, trained, evaluation, airflow_run), "judge_attempt"
    )


def judge_unbuildable(prepared: dict, message: str) -> pipeline.Decision:
    """The XComs of a tweaked attempt whose model the runner could not build (the training task's contract)."""
    trained = {
        "status": "unbuildable",
        "failure": message,
        "pipeline_id": prepared["pipeline_id"],
        "attempt": prepared["attempt"],
        "kind": prepared["kind"],
        "image": "pushtrain/tensorflow:unit",
        "image_id": "sha256:" + "1" * 64,
        "container_wall_seconds": 3.0,
        "container_restarts": 0,
    }
    evaluation = {"status": "not_evaluated", "reason": "the model could not be built"}
    airflow_run = {"dag_id": "tweak_and_retrain", "run_id": f"run-{prepared['attempt']}"}
    return pipeline.Decision.from_xcom(
        steps.judge_attempt(prepared, trained, evaluation, airflow_run), "judge_attempt"
    )


@pytest.fixture
def first_attempt(origin: Origin, templates_dir: Path, digits: datasets.Manifest) -> str:
    """A cnn pipeline whose attempt 1 was prepared, trained and judged (accuracy 0.3); returns its id."""
    files = {"model.py": commented_cnn(templates_dir), "pushtrain.toml": CNN_TOML, "data/README": "notes\n"}
    pipeline_id = checkout(origin, origin.commit(files, "cnn", T0))["pipeline_id"]
    steps.detect_model_kind(pipeline_id)
    prepared = steps.prepare_first_attempt(pipeline_id)
    assert prepared == {
        "pipeline_id": pipeline_id,
        "attempt": 1,
        "kind": "cnn",
        "action": "train",
        "reason": "",
        "warm_start_from": None,
    }
    assert tree(pipeline.attempt_dir(pipeline_id, 1) / "code") == files
    judge(prepared, 0.3)
    return pipeline_id


def changed_lines(old: str, new: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def test_prepare_tweaked_attempt_changes_hparams_only(first_attempt: str) -> None:
    pipeline_id = first_attempt
    before = (pipeline.attempt_dir(pipeline_id, 1) / "code" / "model.py").read_text()

    prepared = steps.prepare_tweaked_attempt(pipeline_id, 2)

    after = (pipeline.attempt_dir(pipeline_id, 2) / "code" / "model.py").read_text()
    record = pipeline.Attempt.load(pipeline_id, 2)
    updates = record.tweak_updates
    assert (prepared["attempt"], prepared["kind"], prepared["action"]) == (2, "cnn", "train")
    assert (record.status, record.based_on_attempt) == ("prepared", 1)
    assert updates and after != before
    old_hparams, new_hparams = tweak.read_hparams(before), tweak.read_hparams(after)
    assert new_hparams == {**old_hparams, **updates} == record.hparams
    assert {k for k in new_hparams if new_hparams[k] != old_hparams.get(k)} == set(updates)
    # Every changed line is an HPARAMS entry of an updated key; comments and the rest are byte-identical.
    entry = re.compile(r'^[+-]\s+"(\w+)": ')
    for line in changed_lines(before, after):
        match = entry.match(line)
        assert match and match.group(1) in updates, line
    assert "# start small, pushtrain grows it" in after
    assert "# keep this comment" in after
    assert before.split("HPARAMS = {")[0] == after.split("HPARAMS = {")[0]  # the docstring
    assert before.split("\ndef build_model")[1] == after.split("\ndef build_model")[1]
    # The other files of the repository come along; attempt 1's copy is untouched.
    assert (pipeline.attempt_dir(pipeline_id, 2) / "code" / "data" / "README").read_text() == "notes\n"
    assert (pipeline.attempt_dir(pipeline_id, 1) / "code" / "model.py").read_text() == before
    assert record.tweak_diff.startswith("--- a/model.py\n+++ b/model.py\n")
    assert record.tweak_diff == tweak.unified_diff(before, after, "model.py")


def test_a_later_attempt_starts_from_the_best_attempt_so_far(first_attempt: str) -> None:
    pipeline_id = first_attempt
    judge(steps.prepare_tweaked_attempt(pipeline_id, 2), 0.6)
    best = pipeline.Attempt.load(pipeline_id, 2)

    steps.prepare_tweaked_attempt(pipeline_id, 3)

    third = pipeline.Attempt.load(pipeline_id, 3)
    assert third.based_on_attempt == 2
    assert (
        tweak.read_hparams((pipeline.attempt_dir(pipeline_id, 3) / "code" / "model.py").read_text())
        == third.hparams
        == {**best.hparams, **third.tweak_updates}
    )
    assert third.hparams != best.hparams
    # The recorded diff is against the code as committed (attempt 1), so it shows every change so far.
    original = (pipeline.attempt_dir(pipeline_id, 1) / "code" / "model.py").read_text()
    tweaked = (pipeline.attempt_dir(pipeline_id, 3) / "code" / "model.py").read_text()
    assert third.tweak_diff == tweak.unified_diff(original, tweaked, "model.py")


def test_a_retried_tweak_writes_the_same_attempt(first_attempt: str) -> None:
    first = steps.prepare_tweaked_attempt(first_attempt, 2)
    record = pipeline.Attempt.load(first_attempt, 2)
    code = pipeline.attempt_dir(first_attempt, 2) / "code"
    (code / "leftover.txt").write_text("from a killed try\n")

    assert steps.prepare_tweaked_attempt(first_attempt, 2) == first
    assert pipeline.Attempt.load(first_attempt, 2) == record
    assert not (code / "leftover.txt").exists()


def test_tweak_without_an_evaluated_attempt_is_a_user_facing_error(first_attempt: str) -> None:
    (pipeline.attempt_dir(first_attempt, 1) / "attempt.json").unlink()

    with pytest.raises(steps.UserFacingError, match="no evaluated attempt"):
        steps.prepare_tweaked_attempt(first_attempt, 2)


def test_judge_attempt_records_the_lineage_and_decides(first_attempt: str, digits: datasets.Manifest) -> None:
    pipeline_id = first_attempt
    prepared = steps.prepare_tweaked_attempt(pipeline_id, 2)

    decision = judge(prepared, 0.95)  # CNN_TOML's target is 0.9

    record = pipeline.Attempt.load(pipeline_id, 2)
    run = pipeline.Pipeline.load(pipeline_id)
    metrics = contract.read_metrics(pipeline.output_dir(pipeline_id, 2))
    assert (decision.action, decision.attempt, decision.accuracy, decision.target) == ("met", 2, 0.95, 0.9)
    assert (record.status, record.accuracy, record.commit, record.repo_url) == (
        "evaluated",
        0.95,
        run.commit,
        run.repo_url,
    )
    assert record.hparams == metrics["hparams"] and record.model_file_sha256 == metrics["code_sha256"]
    assert record.dataset.test_sha256 == digits.test_sha256 and record.dataset.split_version == "v1"
    assert record.image_id == "sha256:" + "1" * 64
    assert record.timings.train_container_seconds == 7.0 and record.timings.evaluate_container_seconds == 2.0
    assert record.airflow.run_id == "run-2" and record.recorded_at
    assert pipeline.Attempt.load(pipeline_id, 1).accuracy == 0.3  # the other attempt is untouched


def test_judge_attempt_retrains_below_target(first_attempt: str) -> None:
    decision = judge(steps.prepare_tweaked_attempt(first_attempt, 2), 0.5)

    assert decision.action == "retrain"
    assert decision.next_run_id == pipeline.trigger_run_id(first_attempt, 3)


def test_an_unbuildable_tweak_is_a_failed_attempt_and_the_loop_moves_on(first_attempt: str) -> None:
    pipeline_id = first_attempt
    prepared = steps.prepare_tweaked_attempt(pipeline_id, 2)
    failed_hparams = pipeline.Attempt.load(pipeline_id, 2).hparams
    message = "ValueError: Computed output size would be negative: -1 [input_size: 1, pool_size: 2]"

    decision = judge_unbuildable(prepared, message)

    record = pipeline.Attempt.load(pipeline_id, 2)
    assert (record.status, record.accuracy, record.evaluation) == ("failed", None, None)
    assert record.reason == f"the model could not be built: {message}"
    assert record.hparams == failed_hparams  # what it tried, so no strategy proposes it again
    assert decision.action == "retrain" and decision.accuracy is None
    assert "attempt 2 failed: the model could not be built" in decision.reason
    # The next attempt starts from the best one (attempt 1) with another move.
    steps.prepare_tweaked_attempt(pipeline_id, 3)
    third = pipeline.Attempt.load(pipeline_id, 3)
    assert third.based_on_attempt == 1
    assert third.hparams != failed_hparams
    assert "failed: the model could not be built" in leaderboard_html(
        pipeline.attempt_records(pipeline_id), 0.9
    )


def test_the_last_attempt_failing_stops_with_the_budget_spent(
    origin: Origin, templates_dir: Path, digits: datasets.Manifest
) -> None:
    files = {
        "model.py": (templates_dir / "cnn_keras.py").read_text(),
        "pushtrain.toml": CNN_TOML + "max_attempts = 2\n",
    }
    pipeline_id = checkout(origin, origin.commit(files, "cnn", T0), params={**PARAMS, "max_attempts": None})[
        "pipeline_id"
    ]
    steps.detect_model_kind(pipeline_id)
    judge(steps.prepare_first_attempt(pipeline_id), 0.3)

    decision = judge_unbuildable(steps.prepare_tweaked_attempt(pipeline_id, 2), "cannot build")

    assert decision.action == "stop"
    assert "budget spent: 2 of 2 attempts, best accuracy 0.3000" in decision.reason


KNN_TWO_COMBINATIONS = """from sklearn.neighbors import KNeighborsClassifier

HPARAMS = {"weights": "uniform"}


def build_estimator(hp):
    return KNeighborsClassifier(n_neighbors=5, weights=hp["weights"])
"""


def test_a_strategy_with_nothing_left_to_try_stops_the_loop_with_the_reason(
    origin: Origin, digits: datasets.Manifest
) -> None:
    files = {
        "model.py": KNN_TWO_COMBINATIONS,
        "pushtrain.toml": 'dataset = "digits"\ntarget = 0.999\nmax_attempts = 6\npatience = 10\n',
    }
    pipeline_id = checkout(
        origin, origin.commit(files, "knn with one knob", T0), params={**PARAMS, "max_attempts": None}
    )["pipeline_id"]
    assert steps.detect_model_kind(pipeline_id) == "knn"
    judge(steps.prepare_first_attempt(pipeline_id), 0.8)
    assert judge(steps.prepare_tweaked_attempt(pipeline_id, 2), 0.85).action == "retrain"

    prepared = steps.prepare_tweaked_attempt(pipeline_id, 3)  # uniform and distance are both tried

    assert prepared["action"] == "stop" and prepared["attempt"] == 3
    assert "strategy default exhausted" in prepared["reason"] and "weights" in prepared["reason"]
    assert not pipeline.attempt_dir(pipeline_id, 3).exists()  # nothing was prepared to train
    decision = steps.judge_attempt(prepared, None, None, {"dag_id": "tweak_and_retrain", "run_id": "run-3"})
    assert (decision["action"], decision["attempt"], decision["reason"]) == ("stop", 2, prepared["reason"])
    report = steps.report_budget_spent(decision)
    assert (report["attempts"], report["best_attempt"], report["best_accuracy"]) == (2, 2, 0.85)
    steps.finish_pipeline(pipeline_id, 3, decision)
    summary = pipeline.Summary.load(pipeline_id)
    assert (summary.outcome, summary.ended_after_attempt, summary.reason) == ("stop", 2, prepared["reason"])
    subject, body = budget_spent_mail(pipeline_id, report["reason"])
    assert "best 0.8500 after 2 attempt(s)" in subject
    assert f"Why it stopped: {html.escape(prepared['reason'])}" in body


def test_register_model_registers_the_winner_with_its_record_as_lineage(
    first_attempt: str, origin: Origin
) -> None:
    pipeline_id = first_attempt
    decision = judge(steps.prepare_tweaked_attempt(pipeline_id, 2), 0.95)

    registered = steps.register_model(decision.to_xcom(), origin.remote)

    run = pipeline.Pipeline.load(pipeline_id)
    record = pipeline.Attempt.load(pipeline_id, 2)
    version = ModelRegistry(settings.registry_dir()).champion(run.model_name)
    assert (registered["version"], registered["attempt"], registered["accuracy"]) == (1, 2, 0.95)
    assert registered["is_champion"] and version.number == 1 and registered["path"] == str(version.path)
    assert version.lineage == record.lineage(run)
    assert (
        version.lineage["tweak_diff"] == record.tweak_diff and version.lineage["pipeline"]["branch"] == BRANCH
    )
    assert version.metrics == record.evaluation.model_dump()
    assert (version.artifact_dir / "model.keras").read_bytes() == b"weights of attempt 2"
    branch = f"pushtrain/{run.commit[:8]}"
    assert registered["pushed_branch"].startswith(branch)
    assert (
        git(origin.bare, "show", f"{branch}:model.py") + "\n"
        == (pipeline.attempt_dir(pipeline_id, 2) / "code" / "model.py").read_text()
    )
    # A retried task registers nothing new and pushes the same commit.
    assert steps.register_model(decision.to_xcom(), origin.remote)["version"] == 1


def test_register_model_without_a_remote_pushes_nothing(first_attempt: str, origin: Origin) -> None:
    decision = judge(steps.prepare_tweaked_attempt(first_attempt, 2), 0.95)

    registered = steps.register_model(decision.to_xcom(), None)

    assert registered["pushed_branch"] is None and registered["version"] == 1
    assert set(origin.branches()) == {BRANCH}


def test_finish_pipeline_keeps_everything_while_the_loop_goes_on(first_attempt: str) -> None:
    decision = judge(steps.prepare_tweaked_attempt(first_attempt, 2), 0.5)

    assert steps.finish_pipeline(first_attempt, 2, decision.to_xcom()) == []
    assert pipeline.Summary.load(first_attempt) is None
    assert (pipeline.workspace_dir(first_attempt) / "repo").exists()
    assert (pipeline.output_dir(first_attempt, 2) / contract.CHECKPOINT_DIR).exists()


def test_finish_pipeline_cleans_up_and_writes_the_summary_once_the_target_is_met(first_attempt: str) -> None:
    decision = judge(steps.prepare_tweaked_attempt(first_attempt, 2), 0.95)

    removed = steps.finish_pipeline(first_attempt, 2, decision.to_xcom())

    assert str(pipeline.workspace_dir(first_attempt)) in removed
    assert not list(pipeline.pipeline_dir(first_attempt).glob("attempt-*/output/checkpoints"))
    assert (pipeline.output_dir(first_attempt, 2) / contract.MODEL_DIR / "model.keras").exists()
    summary = pipeline.Summary.load(first_attempt)
    assert (summary.outcome, summary.ended_after_attempt, summary.reason) == ("met", 2, decision.reason)


def test_finish_pipeline_after_a_failed_task_says_so(first_attempt: str) -> None:
    steps.prepare_tweaked_attempt(first_attempt, 2)  # and then its training task failed

    steps.finish_pipeline(first_attempt, 2, None)

    summary = pipeline.Summary.load(first_attempt)
    assert (summary.outcome, summary.ended_after_attempt) == ("failed", 2)
    assert "attempt 2 failed" in summary.reason
    assert not pipeline.workspace_dir(first_attempt).exists()


def test_finish_pipeline_before_a_pipeline_existed_does_nothing(data_dir: Path) -> None:
    assert steps.finish_pipeline(None, 1, None) == []
    assert steps.finish_pipeline("ffffffff-00000000", 1, None) == []
    assert not (data_dir / "runs").exists()


# --------------------------------------------------------------------------------------- push_model_branch


def tuned_workspace(origin: Origin) -> tuple[str, Path]:
    sha = origin.commit({"model.py": MODEL, "README.md": "hello\n"}, "one", T0)
    workspace = pipeline.workspace_dir(checkout(origin, sha)["pipeline_id"]) / "repo"
    (workspace / "model.py").write_text('HPARAMS = {"epochs": 12}\n')
    return sha, workspace


def test_push_model_branch_pushes_the_tuned_file_on_its_own_branch(origin: Origin) -> None:
    sha, workspace = tuned_workspace(origin)
    branch = f"pushtrain/{sha[:8]}"

    pushed = gitops.push_model_branch(
        origin.remote, workspace, "model.py", branch, "pushtrain: tuned model.py"
    )

    assert origin.branches() == {BRANCH: sha, branch: pushed}
    assert git(origin.bare, "show", f"{branch}:model.py") + "\n" == 'HPARAMS = {"epochs": 12}\n'
    assert git(origin.bare, "show", f"{branch}:README.md") == "hello"
    assert git(origin.bare, "rev-parse", f"{branch}^") == sha
    assert git(origin.bare, "log", "-1", "--format=%an|%s", branch) == "pushtrain|pushtrain: tuned model.py"
    assert git(origin.bare, "diff", "--name-only", sha, branch) == "model.py"


def test_a_retried_push_model_branch_pushes_the_same_commit(origin: Origin) -> None:
    sha, workspace = tuned_workspace(origin)
    branch = f"pushtrain/{sha[:8]}"

    first = gitops.push_model_branch(origin.remote, workspace, "model.py", branch, "tuned")
    again = gitops.push_model_branch(origin.remote, workspace, "model.py", branch, "tuned")

    assert again == first
    assert origin.branches()[branch] == first
    assert git(origin.bare, "rev-list", "--count", f"{sha}..{branch}") == "1"


def test_push_model_branch_to_a_read_only_remote_pushes_nothing(origin: Origin) -> None:
    sha, workspace = tuned_workspace(origin)
    read_only = gitops.GitRemote(url=str(origin.bare), read_only=True)

    assert gitops.push_model_branch(read_only, workspace, "model.py", f"pushtrain/{sha[:8]}", "tuned") is None
    assert origin.branches() == {BRANCH: sha}


def test_a_failed_push_does_not_reveal_the_password(origin: Origin) -> None:
    sha, workspace = tuned_workspace(origin)
    remote = gitops.GitRemote(url="https://127.0.0.1:9/models.git", login="bob", password="hunter2/x")

    with pytest.raises(gitops.GitError) as caught:
        gitops.push_model_branch(remote, workspace, "model.py", f"pushtrain/{sha[:8]}", "tuned")
    message = str(caught.value)
    assert "https://127.0.0.1:9/models.git" in message
    assert "hunter2" not in message and "hunter2%2Fx" not in message


# ---------------------------------------------------------------------------------------------- GitRemote


@pytest.mark.parametrize(
    ("remote", "display", "fetch"),
    [
        (
            gitops.GitRemote(url="https://user:secret@git.example.com/team/models.git"),
            "https://git.example.com/team/models.git",
            "https://user:secret@git.example.com/team/models.git",
        ),
        (
            gitops.GitRemote(
                url="https://git.example.com:8443/models.git", login="bob", password="p@ss/word"
            ),
            "https://git.example.com:8443/models.git",
            "https://bob:p%40ss%2Fword@git.example.com:8443/models.git",
        ),
        (
            gitops.GitRemote(url="https://token@git.example.com/models.git"),
            "https://git.example.com/models.git",
            "https://token@git.example.com/models.git",
        ),
        (
            gitops.GitRemote(url="https://u:pw@[::1]:8443/models.git"),
            "https://[::1]:8443/models.git",
            "https://u:pw@[::1]:8443/models.git",
        ),
        (
            gitops.GitRemote(url="/srv/git/models.git", login="bob", password="pw"),
            "/srv/git/models.git",
            "/srv/git/models.git",
        ),
        (
            gitops.GitRemote(url="git@github.com:team/models.git", key_file="/keys/id"),
            "git@github.com:team/models.git",
            "git@github.com:team/models.git",
        ),
    ],
    ids=["creds in url", "login and password", "token only", "ipv6", "local path", "scp-style ssh"],
)
def test_credentials_appear_only_in_fetch_url(remote: gitops.GitRemote, display: str, fetch: str) -> None:
    assert remote.display_url == display
    assert remote.fetch_url() == fetch


def test_ssh_key_goes_into_the_environment_not_the_url() -> None:
    env = gitops.GitRemote(url="ssh://git@git.example.com/models.git", key_file="/keys/id").environment()

    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert "-i /keys/id" in env["GIT_SSH_COMMAND"] and "BatchMode=yes" in env["GIT_SSH_COMMAND"]


def test_a_failed_fetch_does_not_reveal_or_store_the_password(data_dir: Path) -> None:
    # Port 9 (discard) on loopback: refused at once, no traffic leaves the machine.
    remote = gitops.GitRemote(url="https://user:secret@127.0.0.1:9/x.git")

    with pytest.raises(gitops.GitError) as caught:
        gitops.fetch(remote)

    message = str(caught.value)
    assert "secret" not in message
    assert message.startswith("cannot fetch https://127.0.0.1:9/x.git:")
    for path in data_dir.rglob("*"):  # the mirror's config keeps the URL without credentials
        if path.is_file():
            assert b"secret" not in path.read_bytes(), path


def test_the_mirror_is_shared_by_remotes_that_differ_only_in_credentials(origin: Origin) -> None:
    origin.commit({"model.py": MODEL}, "one", T0)
    one = gitops.fetch(gitops.GitRemote(url=str(origin.bare)))
    two = gitops.fetch(gitops.GitRemote(url=str(origin.bare), login="bob", password="pw"))

    assert Path(one.git_dir) == Path(two.git_dir)
    shutil.rmtree(one.git_dir)
    assert gitops.branch_head(gitops.fetch(origin.remote), BRANCH) is not None  # a lost mirror is rebuilt


def test_adaptive_reads_the_recorded_curve_and_its_reason_reaches_the_record_and_the_mail(
    origin: Origin, templates_dir: Path, digits: datasets.Manifest
) -> None:
    toml = 'target = 0.9\ndataset = "digits"\nstrategy = "adaptive"\n'
    files = {"model.py": (templates_dir / "cnn_keras.py").read_text(), "pushtrain.toml": toml}
    pipeline_id = checkout(origin, origin.commit(files, "cnn, adaptive", T0))["pipeline_id"]
    steps.detect_model_kind(pipeline_id)
    judge(steps.prepare_first_attempt(pipeline_id), 0.88)
    first = pipeline.Attempt.load(pipeline_id, 1)
    assert first.n_train == 48  # from metrics.json, as the strategy's cost estimate needs it
    # The curve the runner wrote: validation accuracy still rising at the last epoch, 0.02 short.
    curve = [
        {"epoch": n, "accuracy": a, "val_accuracy": a, "loss": 1.0 - a, "seconds": 1.0}
        for n, a in enumerate((0.70, 0.80, 0.86, 0.88)[: first.hparams["epochs"]], start=1)
    ]
    first.changed(training_history=curve).save()

    history = pipeline.strategy_history(pipeline.attempt_records(pipeline_id))
    assert history[0].history == tuple(curve) and history[0].n_train == 48
    prepared = steps.prepare_tweaked_attempt(pipeline_id, 2)

    second = pipeline.Attempt.load(pipeline_id, 2)
    expected = strategies.propose("adaptive", "cnn", history, int(second.commit[:8], 16), target=0.9)
    assert second.tweak_updates == dict(expected)
    assert second.tweak_reason and second.tweak_reason == strategies.proposal_reason(expected)
    assert "epochs" in second.tweak_updates and "0.020 short" in second.tweak_reason
    judge(prepared, 0.91)
    board = leaderboard_html(pipeline.attempt_records(pipeline_id), 0.9)
    assert html.escape(second.tweak_reason) in board and board.count("<tr><td>") == 2
