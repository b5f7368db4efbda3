"""Unit tests of pushtrain.pipeline: the configuration a model repository asks for (``pushtrain.toml`` and
Params), the identities every write derives from, the typed records and their validation, the
met/retrain/stop rule, and the clean-up."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from pushtrain import datasets, pipeline
from pushtrain.pipeline import Action, ConfigError, PipelineConfig, RecordError, decide, load_config

# ----------------------------------------------------------------------------------------------- helpers


def write_toml(repo: Path, text: str) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    (repo / pipeline.CONFIG_FILE).write_text(text)
    return repo


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(path))
    return path


# ------------------------------------------------------------------------------------------------ config


def test_defaults_without_pushtrain_toml(tmp_path: Path) -> None:
    config = load_config(tmp_path)

    assert config == PipelineConfig()
    assert config.target == 0.80  # the target the README promises a repository that sets none


FULL_TOML_BODY = """\
target = 0.9
max_attempts = 7
dataset = "digits"
entry = "src/net.py"
kind = "cnn"
strategy = "escalate"
patience = 2
min_gain = 0.01
model_name = "digits-net"
commit_back = false
"""


@pytest.mark.parametrize(
    "text", [FULL_TOML_BODY, "[pushtrain]\n" + FULL_TOML_BODY], ids=["top-level keys", "pushtrain table"]
)
def test_pushtrain_toml_values_are_read(tmp_path: Path, text: str) -> None:
    config = load_config(write_toml(tmp_path / "repo", text))

    assert config == PipelineConfig(
        target=0.9,
        max_attempts=7,
        dataset="digits",
        entry="src/net.py",
        kind="cnn",
        strategy="escalate",
        patience=2,
        min_gain=0.01,
        model_name="digits-net",
        commit_back=False,
    )


@pytest.mark.parametrize("dataset", ["repo:data/pets", "repo:./data/pets/", "pets", "wine-quality.v2"])
def test_a_repo_folder_or_any_valid_data_set_name_is_accepted_without_looking_it_up(
    tmp_path: Path, dataset: str
) -> None:
    config = load_config(write_toml(tmp_path / "repo", f'dataset = "{dataset}"\n'))

    assert config.dataset == dataset  # whether a named set exists is checked when the checkout resolves it


def test_import_keys_are_read_and_become_import_options(tmp_path: Path) -> None:
    text = (
        'dataset = "repo:data/pets"\nimage_size = [64, 48]\nchannels = 3\ntest_fraction = 0.25\n'
        'label_column = "kind"\ncategorical = ["colour", "size"]\n'
    )
    config = load_config(write_toml(tmp_path / "repo", text))

    assert (config.image_size, config.channels, config.test_fraction) == ((64, 48), 3, 0.25)
    assert (config.label_column, config.categorical) == ("kind", ("colour", "size"))
    options = config.import_options()
    assert (options.image_size, options.channels, options.test_fraction) == ((64, 48), 3, 0.25)
    assert (options.label_column, options.categorical) == ("kind", ("colour", "size"))
    assert PipelineConfig(dataset="repo:data").import_options() == datasets.ImportOptions()  # from the data


def test_the_default_test_fraction_with_a_named_data_set_is_no_import_option(tmp_path: Path) -> None:
    config = load_config(write_toml(tmp_path / "repo", 'dataset = "digits"\ntest_fraction = 0.2\n'))

    assert config.import_options() == datasets.ImportOptions()


def test_integer_target_is_accepted_as_a_float(tmp_path: Path) -> None:
    config = load_config(write_toml(tmp_path / "repo", "target = 1\n"))

    assert config.target == 1.0
    assert isinstance(config.target, float)


REPO_TOML = 'target = 0.9\nmax_attempts = 7\nkind = "cnn"\nstrategy = "escalate"\n'


def test_params_override_pushtrain_toml(tmp_path: Path) -> None:
    repo = write_toml(tmp_path / "repo", REPO_TOML)

    config = load_config(repo, {"target": 0.95, "max_attempts": 9, "kind": "knn", "strategy": "random"})

    assert (config.target, config.max_attempts, config.kind, config.strategy) == (0.95, 9, "knn", "random")


def test_empty_params_keep_what_the_repository_asked_for(tmp_path: Path) -> None:
    repo = write_toml(tmp_path / "repo", REPO_TOML)

    config = load_config(repo, {"target": None, "max_attempts": None, "kind": "auto", "strategy": ""})

    assert (config.target, config.max_attempts, config.kind, config.strategy) == (0.9, 7, "cnn", "escalate")


def test_empty_params_without_toml_give_the_defaults(tmp_path: Path) -> None:
    assert (
        load_config(tmp_path, {"target": None, "max_attempts": None, "kind": "auto", "strategy": None})
        == PipelineConfig()
    )


@pytest.mark.parametrize(
    ("toml_text", "overrides", "key"),
    [
        ("epochs = 3\n", None, "epochs"),
        ("[pushtrain]\nlearning_rate = 0.1\n", None, "learning_rate"),
        ("", {"colour": "blue"}, "colour"),
    ],
    ids=["unknown toml key", "unknown key in table", "unknown param"],
)
def test_unknown_keys_are_an_error(tmp_path: Path, toml_text: str, overrides: dict | None, key: str) -> None:
    repo = write_toml(tmp_path / "repo", toml_text)

    with pytest.raises(ConfigError, match="unknown keys") as caught:
        load_config(repo, overrides)
    assert key in str(caught.value)


@pytest.mark.parametrize(
    ("toml_text", "overrides", "key"),
    [
        ("", {"target": "high"}, "target"),
        ('target = "0.9"\n', None, "target"),
        ("", {"max_attempts": True}, "max_attempts"),
        ("max_attempts = 2.5\n", None, "max_attempts"),
        ("patience = 1.0\n", None, "patience"),
        ('commit_back = "yes"\n', None, "commit_back"),
        ("entry = 3\n", None, "entry"),
        ("", {"strategy": 1}, "strategy"),
    ],
    ids=[
        "target str param",
        "target str toml",
        "max_attempts bool",
        "max_attempts float",
        "patience float",
        "commit_back str",
        "entry int",
        "strategy int",
    ],
)
def test_wrong_types_are_an_error_naming_the_key(
    tmp_path: Path, toml_text: str, overrides: dict | None, key: str
) -> None:
    repo = write_toml(tmp_path / "repo", toml_text)

    with pytest.raises(ConfigError, match=rf"^{key} must be "):
        load_config(repo, overrides)


@pytest.mark.parametrize(
    ("toml_text", "key"),
    [
        ("target = 0\n", "target"),
        ("target = 1.5\n", "target"),
        ("target = -0.2\n", "target"),
        ("target = nan\n", "target"),
        ("max_attempts = 0\n", "max_attempts"),
        ("max_attempts = 51\n", "max_attempts"),
        ("patience = 0\n", "patience"),
        ("min_gain = -0.1\n", "min_gain"),
        ("min_gain = 2.0\n", "min_gain"),
        ('metric = "loss"\n', "metric"),
        ('dataset = "image net!"\n', "dataset"),
        ('dataset = "repo:/srv/data"\n', "dataset"),
        ('dataset = "repo:../data"\n', "dataset"),
        ('dataset = "repo:data/../../etc"\n', "dataset"),
        ('dataset = "repo:"\n', "dataset"),
        ('dataset = "repo:."\n', "dataset"),
        ('dataset = "repo:data"\nimage_size = [64]\n', "image_size"),
        ('dataset = "repo:data"\nimage_size = [0, 64]\n', "image_size"),
        ('dataset = "repo:data"\nimage_size = ["64", "64"]\n', "image_size"),
        ('dataset = "repo:data"\nimage_size = 64\n', "image_size"),
        ('dataset = "repo:data"\nchannels = 2\n', "channels"),
        ('dataset = "repo:data"\nchannels = true\n', "channels"),
        ('dataset = "repo:data"\nlabel_column = 3\n', "label_column"),
        ('dataset = "repo:data"\ncategorical = ["colour", "colour"]\n', "categorical"),
        ('dataset = "repo:data"\ncategorical = "colour"\n', "categorical"),
        ('dataset = "repo:data"\ntest_fraction = 0.95\n', "test_fraction"),
        ('dataset = "repo:data"\ntest_fraction = 0\n', "test_fraction"),
        ('dataset = "digits"\nchannels = 3\n', "channels"),
        ('kind = "transformer"\n', "kind"),
        ('strategy = "genetic"\n', "strategy"),
        ('entry = "/etc/passwd"\n', "entry"),
        ('entry = "../outside.py"\n', "entry"),
        ('entry = "src/../../outside.py"\n', "entry"),
        ('model_name = "my model!"\n', "model_name"),
    ],
    ids=lambda value: value.strip() if isinstance(value, str) else value,
)
def test_invalid_values_are_an_error_naming_the_key(tmp_path: Path, toml_text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_toml(tmp_path / "repo", toml_text))
    assert re.search(rf"\b{key}\b", str(caught.value)), str(caught.value)


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_toml(tmp_path / "repo", 'target = 2.0\ndataset = "image net"\n'))
    assert "target" in str(caught.value) and "dataset" in str(caught.value)


def test_allowed_values_are_named_in_the_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="digits.*mnist5k"):
        load_config(write_toml(tmp_path / "repo", 'dataset = "image net"\n'))


def test_bad_param_override_is_an_error_even_with_a_valid_toml(tmp_path: Path) -> None:
    repo = write_toml(tmp_path / "repo", "max_attempts = 3\n")
    with pytest.raises(ConfigError, match="max_attempts"):
        load_config(repo, {"max_attempts": 500})


INVALID_TOML = ["target = \n", "[pushtrain\ntarget = 0.9\n", "target = 0.9\ntarget = 0.8\n"]


@pytest.mark.parametrize("text", INVALID_TOML, ids=["missing value", "unclosed table", "duplicate key"])
def test_invalid_toml_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="pushtrain.toml is not valid TOML"):
        load_config(write_toml(tmp_path / "repo", text))


def test_pushtrain_key_that_is_not_a_table_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pushtrain"):
        load_config(write_toml(tmp_path / "repo", 'pushtrain = "fast please"\n'))


# ---------------------------------------------------------------------------------------------- identity


def test_pipeline_id_is_deterministic_and_starts_with_the_short_sha() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    first = pipeline.pipeline_id_for(sha, "scheduled__2026-11-23T01:46:43.967200+00:00")

    assert first == pipeline.pipeline_id_for(sha, "scheduled__2026-11-23T01:46:43.967200+00:00")
    assert first.startswith("01234567-")
    assert first != pipeline.pipeline_id_for(sha, "manual__2026-11-23T01:46:43.967200+00:00")


def test_trigger_run_id_is_deterministic_per_pipeline_and_attempt() -> None:
    run_id = pipeline.trigger_run_id("01234567-89abcdef", 2)

    assert run_id == pipeline.trigger_run_id("01234567-89abcdef", 2)
    assert run_id == "pushtrain__01234567-89abcdef__attempt-2"
    assert run_id != pipeline.trigger_run_id("01234567-89abcdef", 3)
    assert run_id != pipeline.trigger_run_id("01234567-00000000", 2)


DOCKER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")  # the rule the Docker engine enforces


@pytest.mark.parametrize(
    "run_id",
    [
        "scheduled__2026-11-23T01:46:43.967200+00:00",
        "manual__2026-11-23T01:46:43+00:00",
        "backfill__2026-01-01T00:05:00+00:00",
        "odd run/id with spaces:and@symbols",
    ],
)
def test_container_name_is_docker_safe(run_id: str) -> None:
    name = pipeline.container_name(run_id, 3, "train")

    assert DOCKER_NAME.fullmatch(name), name
    assert name.startswith("pushtrain-") and name.endswith("-a3-train")
    assert name == pipeline.container_name(run_id, 3, "train")
    assert name != pipeline.container_name(run_id, 4, "train")
    assert name != pipeline.container_name(run_id, 3, "evaluate")


def test_dirs_are_under_the_data_dir_and_keyed_on_pipeline_and_attempt(data_dir: Path) -> None:
    assert pipeline.pipeline_dir("abc-1") == data_dir.resolve() / "runs" / "abc-1"
    assert pipeline.attempt_dir("abc-1", 2) == data_dir.resolve() / "runs" / "abc-1" / "attempt-2"
    assert pipeline.workspace_dir("abc-1") == data_dir.resolve() / "workspaces" / "abc-1"


def test_a_pipeline_id_cannot_escape_the_runs_dir(data_dir: Path) -> None:
    path = pipeline.pipeline_dir("../../etc")
    assert path.parent == data_dir.resolve() / "runs"


def a_pipeline(**changes) -> pipeline.Pipeline:
    fields = {
        "pipeline_id": "01234567-89abcdef",
        "repo_url": "/srv/git/models.git",
        "branch": "main",
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "author_name": "Ada",
        "author_email": "ada@example.com",
        "commit_message": "first",
        "kind": "cnn",
        "config": PipelineConfig(target=0.9),
        "origin_dag_run_id": "manual__1",
        "model_name": "models",
        "detection": ["keras.layers.Conv2D at line 3"],
    }
    return pipeline.Pipeline(**{**fields, **changes})


def test_pipeline_round_trips_through_pipeline_json() -> None:
    run = a_pipeline()
    run.save()

    assert pipeline.Pipeline.load(run.pipeline_id) == run
    with pytest.raises(FileNotFoundError, match="cleaned up"):
        pipeline.Pipeline.load("ffffffff-00000000")


def test_attempt_records_are_the_judged_attempts_in_attempt_order(attempts) -> None:
    for attempt in (10, 2, 1):
        attempts.evaluated(attempt, 0.1 * attempt / 10).save()
    attempts.failed(3, "the model could not be built: negative dimension").save()
    prepared = attempts.evaluated(11, 0.5).changed(status="prepared", evaluation=None)
    prepared.save()  # still in training: not judged yet

    records = pipeline.attempt_records(attempts.pipeline_id)

    assert [(r.attempt, r.status) for r in records] == [
        (1, "evaluated"),
        (2, "evaluated"),
        (3, "failed"),
        (10, "evaluated"),
    ]
    assert records[0] == pipeline.Attempt.load(attempts.pipeline_id, 1)
    assert pipeline.Attempt.load(attempts.pipeline_id, 11) == prepared
    assert pipeline.attempt_records("no-such-pipeline") == []


# ------------------------------------------------------------------------------------ records on load


def attempt_json(attempts) -> Path:
    attempts.evaluated(2, 0.7).save()
    return pipeline.attempt_dir(attempts.pipeline_id, 2) / pipeline.ATTEMPT_FILE


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (lambda d: d["evaluation"].update(accuracy="0.7"), "evaluation.accuracy", "valid number"),
        (lambda d: d["evaluation"].update(accuracy=1.5), "evaluation.accuracy", "less than or equal to 1"),
        (lambda d: d.pop("commit"), "commit", "Field required"),
        (lambda d: d.update(attempts=2), "attempts", "Extra inputs are not permitted"),
        (lambda d: d.update(schema_version=2), "schema_version", "Input should be 1"),
        (lambda d: d.update(status="lost"), "status", "'prepared', 'evaluated' or 'failed'"),
        (lambda d: d["timings"].update(train_seconds=None), "timings.train_seconds", "valid number"),
    ],
    ids=[
        "string for a number",
        "accuracy above 1",
        "missing field",
        "unknown field",
        "newer schema",
        "unknown status",
        "null for a number",
    ],
)
def test_an_attempt_json_that_does_not_fit_names_the_file_and_the_field(
    attempts, change, field: str, problem: str
) -> None:
    path = attempt_json(attempts)
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))

    with pytest.raises(RecordError) as caught:
        pipeline.Attempt.load(attempts.pipeline_id, 2)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert f"field {field}: " in message and problem in message, message


def test_an_attempt_json_that_is_not_json_names_the_file(attempts) -> None:
    path = attempt_json(attempts)
    path.write_text('{"attempt": 2,')

    with pytest.raises(RecordError, match=rf"^{re.escape(str(path))}: Invalid JSON"):
        pipeline.attempt_records(attempts.pipeline_id)


@pytest.mark.parametrize(
    ("status", "remove", "problem"),
    [
        ("evaluated", "evaluation", "an evaluated attempt needs evaluation"),
        ("failed", "reason", "a failed attempt needs the reason it failed"),
    ],
    ids=["evaluated without evaluation", "failed without reason"],
)
def test_an_attempt_must_hold_what_its_status_promises(
    attempts, status: str, remove: str, problem: str
) -> None:
    path = attempt_json(attempts) if status == "evaluated" else None
    if path is None:
        attempts.failed(2, "cannot build").save()
        path = pipeline.attempt_dir(attempts.pipeline_id, 2) / pipeline.ATTEMPT_FILE
    document = json.loads(path.read_text())
    document[remove] = None if remove == "evaluation" else ""
    path.write_text(json.dumps(document))

    with pytest.raises(RecordError, match=problem):
        pipeline.Attempt.load(attempts.pipeline_id, 2)
    with pytest.raises(ValueError, match=problem):  # the same rule when the pipeline builds one
        pipeline.Attempt.model_validate_json(json.dumps(document))


def test_a_pipeline_json_with_an_invalid_config_names_the_file_and_the_key() -> None:
    run = a_pipeline()
    run.save()
    path = pipeline.pipeline_dir(run.pipeline_id) / pipeline.PIPELINE_FILE
    document = json.loads(path.read_text())
    document["config"]["max_attempts"] = 0
    document["config"]["colour"] = "blue"
    path.write_text(json.dumps(document))

    with pytest.raises(RecordError) as caught:
        pipeline.Pipeline.load(run.pipeline_id)
    assert str(caught.value).startswith(f"{path}: field config")
    assert "colour" in str(caught.value)


def test_a_changed_record_is_validated_again(attempts) -> None:
    record = attempts.evaluated(1, 0.5)

    with pytest.raises(ValueError, match="an evaluated attempt needs"):
        record.changed(timings=None)
    assert record.changed(container_restarts=2).container_restarts == 2


def test_a_decision_travels_through_xcom_and_carries_the_next_run_id() -> None:
    decision = pipeline.Decision(
        pipeline_id="01234567-89abcdef",
        attempt=2,
        action=Action.RETRAIN,
        reason="accuracy 0.5 < target 0.9",
        accuracy=0.5,
        target=0.9,
    )

    value = json.loads(json.dumps(decision.to_xcom()))  # what XCom stores and hands back

    assert value["next_attempt"] == 3
    assert value["next_run_id"] == pipeline.trigger_run_id("01234567-89abcdef", 3)  # trigger_retrain's id
    assert pipeline.Decision.from_xcom(value, "judge_attempt") == decision


def test_a_damaged_xcom_names_the_task_and_the_field() -> None:
    with pytest.raises(RecordError, match=r"^the XCom of judge_attempt: field action: .*'met', 'retrain'"):
        pipeline.Decision.from_xcom(
            {
                "pipeline_id": "p",
                "attempt": 2,
                "action": "maybe",
                "reason": "",
                "accuracy": None,
                "target": 0.9,
            },
            "judge_attempt",
        )
    with pytest.raises(RecordError, match=r"^the XCom of prepare_attempt: field attempt: Field required"):
        pipeline.PreparedAttempt.from_xcom({"pipeline_id": "p", "kind": "cnn"}, "prepare_attempt")


# ------------------------------------------------------------------------------------------------ decide


def test_met_when_accuracy_equals_the_target(attempts) -> None:
    config = PipelineConfig(target=0.8)
    decision = decide(config, [attempts.evaluated(1, 0.5), attempts.evaluated(2, 0.8)], 2)

    assert decision.action == Action.MET
    assert (decision.attempt, decision.accuracy, decision.target) == (2, 0.8, 0.8)


def test_met_takes_precedence_over_a_spent_budget(attempts) -> None:
    config = PipelineConfig(target=0.8, max_attempts=2)
    assert decide(config, [attempts.evaluated(1, 0.5), attempts.evaluated(2, 0.85)], 2).action == Action.MET


def test_stop_at_max_attempts_says_budget_spent(attempts) -> None:
    config = PipelineConfig(target=0.9, max_attempts=3)
    records = [attempts.evaluated(1, 0.5), attempts.evaluated(2, 0.7), attempts.evaluated(3, 0.6)]

    decision = decide(config, records, 3)

    assert decision.action == Action.STOP
    assert "budget spent" in decision.reason
    assert "0.7000" in decision.reason  # the best accuracy, not the last one
    assert decision.accuracy == 0.6


def test_stop_when_the_last_patience_attempts_gained_nothing_real(attempts) -> None:
    config = PipelineConfig(target=0.9, max_attempts=10, patience=2, min_gain=0.005)
    records = [attempts.evaluated(1, 0.5), attempts.evaluated(2, 0.502), attempts.evaluated(3, 0.503)]

    decision = decide(config, records, 3)

    assert decision.action == Action.STOP
    assert "no real gain" in decision.reason


def test_retrain_while_flat_attempts_are_fewer_than_patience(attempts) -> None:
    config = PipelineConfig(target=0.9, max_attempts=10, patience=3, min_gain=0.005)
    records = [attempts.evaluated(1, 0.5), attempts.evaluated(2, 0.502), attempts.evaluated(3, 0.503)]

    assert decide(config, records, 3).action == Action.RETRAIN


def test_retrain_below_target_with_budget_and_gain_left(attempts) -> None:
    config = PipelineConfig(target=0.9, max_attempts=5)
    records = [attempts.evaluated(2, 0.6), attempts.evaluated(1, 0.5)]  # order on disk is not attempt order

    decision = decide(config, records, 2)

    assert decision.action == Action.RETRAIN
    assert decision.accuracy == 0.6
    assert "attempt 3 of 5" in decision.reason


def test_a_failed_attempt_is_retrained_past_with_its_reason(attempts) -> None:
    config = PipelineConfig(target=0.9, max_attempts=5)
    records = [attempts.evaluated(1, 0.5), attempts.failed(2, "the model could not be built: negative size")]

    decision = decide(config, records, 2)

    assert decision.action == Action.RETRAIN
    assert decision.accuracy is None
    assert "attempt 2 failed: the model could not be built: negative size" in decision.reason
    assert "attempt 3 of 5 next" in decision.reason


def test_a_failed_attempt_counts_against_max_attempts(attempts) -> None:
    config = PipelineConfig(target=0.9, max_attempts=2)
    records = [attempts.evaluated(1, 0.5), attempts.failed(2, "the model could not be built")]

    decision = decide(config, records, 2)

    assert decision.action == Action.STOP
    assert "budget spent: 2 of 2 attempts, best accuracy 0.5000" in decision.reason


def test_failed_attempts_count_as_no_gain_for_patience(attempts) -> None:
    config = PipelineConfig(target=0.9, max_attempts=10, patience=2)
    records = [
        attempts.evaluated(1, 0.5),
        attempts.failed(2, "cannot build"),
        attempts.failed(3, "cannot build"),
    ]

    assert decide(config, records, 3).action == Action.STOP


def test_best_record_prefers_the_earlier_attempt_on_a_tie_and_ignores_failed_ones(attempts) -> None:
    records = [
        attempts.evaluated(1, 0.7),
        attempts.evaluated(2, 0.9),
        attempts.failed(3, "cannot build"),
        attempts.evaluated(4, 0.9),
    ]
    assert pipeline.best_record(records).attempt == 2
    assert pipeline.best_record([attempts.failed(2, "cannot build")]) is None


def test_a_strategy_sees_a_failed_attempt_as_nan_with_its_hparams(attempts) -> None:
    failed = attempts.failed(2, "cannot build", hparams={"conv_blocks": 5})

    history = pipeline.strategy_history([attempts.evaluated(1, 0.5, train_seconds=4.0), failed])

    assert (history[0].accuracy, history[0].train_seconds) == (0.5, 4.0)
    assert history[1].hparams == {"conv_blocks": 5}
    assert math.isnan(history[1].accuracy) and history[1].train_seconds == 0.0


# ----------------------------------------------------------------------------------------------- cleanup


def test_cleanup_removes_workspace_and_checkpoints_but_keeps_the_results(attempts) -> None:
    pipeline_id = attempts.pipeline_id
    workspace = pipeline.workspace_dir(pipeline_id) / "repo"
    workspace.mkdir(parents=True)
    (workspace / "model.py").write_text("HPARAMS = {}\n")
    kept = []
    for attempt in (1, 2):
        out = pipeline.output_dir(pipeline_id, attempt)
        (out / "checkpoints").mkdir(parents=True)
        (out / "checkpoints" / "epoch-1.keras").write_bytes(b"x" * 100)
        (out / "model").mkdir()
        (out / "model" / "model.keras").write_bytes(b"weights")
        (out / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
        attempts.evaluated(attempt, 0.5).save()
        kept += [
            out / "model" / "model.keras",
            out / "metrics.json",
            pipeline.attempt_dir(pipeline_id, attempt) / "attempt.json",
        ]
    other = pipeline.output_dir("ffffffff-00000000", 1) / "checkpoints"
    other.mkdir(parents=True)

    removed = pipeline.cleanup(pipeline_id)

    assert not pipeline.workspace_dir(pipeline_id).exists()
    assert not any(pipeline.pipeline_dir(pipeline_id).glob("attempt-*/output/checkpoints"))
    assert all(path.exists() for path in kept)
    assert other.exists()  # another pipeline's checkpoints are not ours to remove
    assert sorted(removed) == sorted(
        str(p)
        for p in [
            pipeline.workspace_dir(pipeline_id),
            pipeline.output_dir(pipeline_id, 1) / "checkpoints",
            pipeline.output_dir(pipeline_id, 2) / "checkpoints",
        ]
    )
    assert pipeline.cleanup(pipeline_id) == []  # idempotent
