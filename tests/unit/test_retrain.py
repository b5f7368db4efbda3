"""Retraining when data changes (issue 10): which champions an asset event affects, and the pipeline built for
one of them (the champion's commit, its final HPARAMS in the model file, one attempt, the new data version).

Real git repositories, data sets and registry under a temporary data dir, as in test_steps_git (whose
``origin`` and ``data_dir`` fixtures are reused); no scheduler and no container.
"""

# ruff: noqa: F811  (the fixtures imported from test_steps_git are parameters of the tests here)
from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_steps_git import T0, Origin, data_dir, judge, origin  # noqa: F401  (data_dir, origin: fixtures)

from pushtrain import datasets, gitops, mail, pipeline, rescore, retrain, settings, steps, tweak
from pushtrain.registry import ModelRegistry

TEMPLATE = Path(__file__).resolve().parents[2] / "include" / "model_templates" / "linear_sklearn.py"
CHAMPION_HPARAMS = {"epochs": 3, "alpha": 0.01, "eta0": 0.001, "average": False, "seed": 0}


def event(name: str, version: Any, *, alias: bool = False, extra: dict | None = None) -> SimpleNamespace:
    """An asset event as the task context's ``triggering_asset_events`` holds it."""
    uri = f"pushtrain-dataset://{name}"
    extra = {"name": name, "version": version, "sha256": "ab" * 32} if extra is None else extra
    aliases = [SimpleNamespace(name="pushtrain-datasets")] if alias else []
    return SimpleNamespace(asset=SimpleNamespace(name=uri, uri=uri), extra=extra, source_aliases=aliases)


def table_version(tmp_path: Path, name: str, rows: int) -> datasets.Manifest:
    """A version of a small table data set; another ``rows`` is other content, so the next version."""
    source = tmp_path / f"{name}-{rows}.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "label"])
        writer.writerows([[f"{i % 7}.5", f"{i % 5}.25", ("x", "y", "z")[i % 3]] for i in range(rows)])
    return datasets.add_path(name, source).manifest


def register_champion(
    model_name: str,
    dataset: str,
    version: int,
    *,
    accuracy: float = 0.9,
    repo_url: str = "/srv/git/models.git",
    commit: str = "0123abcd" * 5,
    config: dict | None = None,
) -> int:
    """Register a version whose lineage has the shape ``Attempt.lineage`` gives, and make it champion."""
    artifact = settings.data_dir() / "artifacts" / model_name
    artifact.mkdir(parents=True, exist_ok=True)
    (artifact / "model.joblib").write_bytes(f"{model_name}:{dataset}:{version}:{accuracy}".encode())
    lineage = {
        "pipeline_id": f"{commit[:8]}-0000beef",
        "attempt": 2,
        "status": "evaluated",
        "repo_url": repo_url,
        "commit": commit,
        "kind": "linear",
        "model_file": "model.py",
        "hparams": CHAMPION_HPARAMS,
        "dataset": {"name": dataset, "split_version": f"v{version}", "split": {}},
        "pipeline": {
            "branch": "main",
            "config": {
                "target": 0.3,
                "max_attempts": 4,
                "dataset": dataset,
                "image_size": [],
                **(config or {}),
            },
        },
    }
    registry = ModelRegistry(settings.registry_dir())
    registered = registry.register(
        model_name, artifact, {"accuracy": accuracy}, lineage, pipeline_run_id=lineage["pipeline_id"]
    )
    registry.promote_if_not_worse(model_name, registered)
    return registered.number


def test_events_give_each_new_version_once_and_a_versionless_one_means_the_latest(
    data_dir: Path, tmp_path: Path
) -> None:
    table_version(tmp_path, "shapes", 30)
    table_version(tmp_path, "shapes", 33)
    events = {
        "pushtrain-dataset://wine": [event("wine", 3)],
        "pushtrain-datasets": [event("wine", 3, alias=True), event("wine", "v4", alias=True)],
        "pushtrain-dataset://shapes": [event("shapes", None, extra={})],  # posted by hand, no extra
        "other://thing": [event("thing", 1, extra={})],
    }
    events["other://thing"][0].asset.uri = "other://thing"

    found = retrain.new_versions(events)

    assert [(v.name, v.version) for v in found] == [("shapes", 2), ("wine", 3), ("wine", 4)]
    assert found[1].sha256 == "ab" * 32


def test_only_champions_on_an_older_version_of_that_data_set_are_affected(data_dir: Path) -> None:
    register_champion("old-one", "shapes", 1)
    register_champion("current", "shapes", 2)
    register_champion("newer", "shapes", 3)
    register_champion("elsewhere", "digits", 1)
    register_champion("in-repo", "shapes", 1, config={"dataset": "repo:data/shapes"})
    register_champion("older-still", "shapes", 1, accuracy=0.7)
    said: list[str] = []

    affected = retrain.affected_champions(
        retrain.NewVersion("shapes", 2), ModelRegistry(settings.registry_dir()), said.append
    )

    assert [c.model_name for c in affected] == ["old-one", "older-still"]
    champion = affected[1]
    assert (champion.version, champion.dataset_version, champion.accuracy) == (1, 1, 0.7)
    assert champion.hparams == CHAMPION_HPARAMS and champion.kind == "linear"
    assert any(line.startswith("current: champion v1 is on shapes v2 already") for line in said)
    assert any(line.startswith("in-repo: its data set is a folder of its repository") for line in said)


def test_a_challenger_is_not_retrained_only_the_champion(data_dir: Path) -> None:
    register_champion("model", "shapes", 1, accuracy=0.9)
    register_champion("model", "shapes", 1, accuracy=0.5)  # worse: registered as challenger

    affected = retrain.affected_champions(
        retrain.NewVersion("shapes", 2), ModelRegistry(settings.registry_dir())
    )

    assert [(c.model_name, c.version, c.accuracy) for c in affected] == [("model", 1, 0.9)]


def test_the_retrain_pipeline_is_the_champions_commit_and_hparams_on_the_new_version(
    origin: Origin, data_dir: Path, tmp_path: Path
) -> None:
    table_version(tmp_path, "shapes", 30)
    new = table_version(tmp_path, "shapes", 33)
    template = TEMPLATE.read_text()
    sha = origin.commit({"model.py": template}, "linear model", T0)
    origin.commit({"model.py": template.replace('"seed": 0', '"seed": 1')}, "later work", T0.replace(hour=13))
    register_champion("species", "shapes", 1, accuracy=0.8, repo_url=str(origin.bare), commit=sha)
    events = {"pushtrain-dataset://shapes": [event("shapes", 2)]}
    said: list[str] = []

    planned, failures = retrain.plan(
        events, "asset_triggered__1", lambda url: gitops.GitRemote(url=url), said.append
    )

    assert failures == []
    [conf] = planned
    pipeline_id = conf["pipeline_id"]
    assert conf == {
        "pipeline_id": pipeline_id,
        "attempt": 1,
        "run_id": pipeline.trigger_run_id(pipeline_id, 1),
    }
    run = pipeline.Pipeline.load(pipeline_id)
    assert (run.commit, run.model_name, run.kind, run.origin_dag_run_id) == (
        sha,
        "species",
        "linear",
        "asset_triggered__1",
    )
    assert run.pinned_dataset == ("shapes", new.version) == ("shapes", 2)
    assert (run.config.max_attempts, run.config.target, run.config.commit_back) == (1, 0.3, False)
    code = (pipeline.attempt_dir(pipeline_id, 1) / "code" / "model.py").read_text()
    assert tweak.read_hparams(code) == CHAMPION_HPARAMS  # the champion's knobs, at the champion's commit
    assert code == tweak.apply_hparams(template, {"epochs": 3, "alpha": 0.01})
    record = pipeline.Attempt.load(pipeline_id, 1)
    assert (record.status, record.hparams, record.tweak_updates) == (
        "prepared",
        CHAMPION_HPARAMS,
        {"epochs": 3, "alpha": 0.01},
    )
    assert record.tweak_diff == tweak.unified_diff(template, code, "model.py")
    assert rescore.retrain_record(pipeline_id) == {
        "model_name": "species",
        "champion_version": 1,
        "champion_pipeline_id": f"{sha[:8]}-0000beef",
        "dataset": "shapes",
        "from_version": 1,
        "to_version": 2,
        "dataset_sha256": new.dataset_sha256,
        "champion_accuracy": 0.8,
        "champion_accuracy_measured_on": "shapes v1",
        "champion_rescored_on_new_split": False,
        "champion_accuracy_new_split": None,
    }
    assert any("re-scored on v2's before the retrained model is registered" in line for line in said)
    line = mail.retrain_html(pipeline_id)
    assert "champion v1" in line and "shapes v2, trained before on v1" in line and "not re-scored" in line
    assert mail.retrain_html("0123abcd-feedbeef") == ""  # any other pipeline
    # What tweak_and_retrain's prepare_attempt hands on for attempt 1 of this pipeline.
    assert rescore.is_retrain(pipeline_id)
    assert (
        retrain.prepared_attempt(pipeline_id)
        == pipeline.PreparedAttempt(pipeline_id=pipeline_id, attempt=1, kind="linear").to_xcom()
    )
    # The same run, retried, prepares the same pipeline again rather than a second one.
    again, _ = retrain.plan(events, "asset_triggered__1", lambda url: gitops.GitRemote(url=url))
    assert again == planned


def test_a_model_whose_retrain_cannot_be_prepared_is_a_failure_line_and_the_others_go_on(
    origin: Origin, data_dir: Path, tmp_path: Path
) -> None:
    table_version(tmp_path, "shapes", 30)
    table_version(tmp_path, "shapes", 33)
    sha = origin.commit({"model.py": TEMPLATE.read_text()}, "linear model", T0)
    register_champion("good", "shapes", 1, repo_url=str(origin.bare), commit=sha)
    register_champion("lost", "shapes", 1, repo_url=str(tmp_path / "gone.git"), commit=sha)

    planned, failures = retrain.plan(
        {"pushtrain-dataset://shapes": [event("shapes", 2)]},
        "asset_triggered__2",
        lambda url: gitops.GitRemote(url=url),
    )

    assert [pipeline.Pipeline.load(p["pipeline_id"]).model_name for p in planned] == ["good"]
    assert len(failures) == 1 and failures[0].startswith("lost (champion v1): ")


def test_an_event_for_a_version_the_store_lacks_prepares_nothing(data_dir: Path, tmp_path: Path) -> None:
    table_version(tmp_path, "shapes", 30)
    register_champion("model", "shapes", 1)

    planned, failures = retrain.plan(
        {"pushtrain-dataset://shapes": [event("shapes", 5)]}, "run", lambda url: gitops.GitRemote(url=url)
    )

    assert planned == []
    assert len(failures) == 1 and "v5 does not exist" in failures[0]


@pytest.mark.parametrize(
    "extra", [{"version": 0}, {"version": "latest"}, {"version": True}, {"name": "../etc", "version": 1}]
)
def test_an_event_with_a_bad_version_is_ignored(data_dir: Path, extra: dict) -> None:
    assert retrain.new_versions({"a": [event("shapes", None, extra=extra)]}) == []


def planned_retrain(origin: Origin, tmp_path: Path, champion_accuracy: float) -> str:
    """A champion on shapes v1 (recorded accuracy ``champion_accuracy``), and its retrain on v2 prepared."""
    table_version(tmp_path, "shapes", 30)
    table_version(tmp_path, "shapes", 33)
    sha = origin.commit({"model.py": TEMPLATE.read_text()}, "linear model", T0)
    register_champion(
        "species", "shapes", 1, accuracy=champion_accuracy, repo_url=str(origin.bare), commit=sha
    )
    [conf], _ = retrain.plan(
        {"pushtrain-dataset://shapes": [event("shapes", 2)]},
        "asset_triggered__1",
        lambda url: gitops.GitRemote(url=url),
    )
    return conf["pipeline_id"]


def champion_scores(monkeypatch: pytest.MonkeyPatch, accuracy: float | Exception) -> list[tuple[str, int]]:
    """The champion's evaluation on the new split (the container run, replaced): ``accuracy`` or a failure."""
    calls: list[tuple[str, int]] = []

    def evaluate(pipeline_id: str, champion: Any) -> dict:
        calls.append((pipeline_id, champion.number))
        if isinstance(accuracy, Exception):
            raise accuracy
        return {"accuracy": accuracy, "f1": accuracy, "n_evaluated": 10, "dataset_sha256": "cd" * 32}

    monkeypatch.setattr(rescore, "_evaluate_in_container", evaluate)
    return calls


def test_a_champion_that_scores_better_on_the_new_split_stays_champion(
    origin: Origin, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Recorded 0.80 on v1's split: the retrained 0.85 would have beaten that; re-scored on v2's it is 0.90.
    pipeline_id = planned_retrain(origin, tmp_path, 0.8)
    calls = champion_scores(monkeypatch, 0.9)
    decision = judge(retrain.prepared_attempt(pipeline_id), 0.85)

    registered = steps.register_model(decision.to_xcom(), None)

    assert calls == [(pipeline_id, 1)]
    registry = ModelRegistry(settings.registry_dir())
    assert (registered["version"], registered["is_champion"]) == (2, False)
    assert registry.champion("species").number == 1 and registry.challenger("species").number == 2
    assert registered["promotion"] == (
        "kept v1: its accuracy 0.9 on shapes v2's held-out split beats candidate v2's 0.85"
    )
    record = rescore.retrain_record(pipeline_id)
    assert record["champion_rescored_on_new_split"] and record["champion_accuracy_new_split"] == 0.9
    assert record["champion_accuracy"] == 0.8 and record["champion_accuracy_measured_on"] == "shapes v1"
    assert registry.get("species", 2).lineage["retrain"] == record
    line = mail.retrain_html(pipeline_id)
    assert "0.8000 on shapes v1's held-out split, 0.9000 re-scored on shapes v2's" in line
    # A retried task registers nothing new, scores the champion no second time and decides the same.
    again = steps.register_model(decision.to_xcom(), None)
    assert (again["version"], again["is_champion"], calls) == (2, False, [(pipeline_id, 1)])
    assert registry.champion("species").number == 1


def test_a_champion_that_scores_worse_on_the_new_split_gives_way(
    origin: Origin, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Recorded 0.80 on v1's split would have kept it; re-scored on v2's it is 0.70, below the retrained 0.75.
    pipeline_id = planned_retrain(origin, tmp_path, 0.8)
    champion_scores(monkeypatch, 0.7)
    decision = judge(retrain.prepared_attempt(pipeline_id), 0.75)

    registered = steps.register_model(decision.to_xcom(), None)

    assert (registered["version"], registered["is_champion"]) == (2, True)
    assert ModelRegistry(settings.registry_dir()).champion("species").number == 2
    assert registered["promotion"] == (
        "promoted v2: its accuracy 0.75 beats v1's 0.7 on shapes v2's held-out split"
    )
    assert "0.7000 re-scored on shapes v2's" in mail.retrain_html(pipeline_id)
    # Retried once v2 is champion: it stays champion, and the record keeps the re-scored figure.
    again = steps.register_model(decision.to_xcom(), None)
    assert (again["version"], again["is_champion"]) == (2, True)
    assert again["promotion"] == "v2 is already champion"
    assert rescore.retrain_record(pipeline_id)["champion_accuracy_new_split"] == 0.7


def test_a_champion_that_cannot_be_rescored_leaves_the_retrained_model_challenger(
    origin: Origin, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline_id = planned_retrain(origin, tmp_path, 0.8)
    champion_scores(monkeypatch, rescore.RescoreError("champion v1's evaluation failed: exit 3"))
    decision = judge(retrain.prepared_attempt(pipeline_id), 0.95)

    registered = steps.register_model(decision.to_xcom(), None)

    assert (registered["version"], registered["is_champion"]) == (2, False)
    assert ModelRegistry(settings.registry_dir()).challenger("species").number == 2
    assert (
        "could not be re-scored on the new split: champion v1's evaluation failed" in registered["promotion"]
    )
    record = rescore.retrain_record(pipeline_id)
    assert not record["champion_rescored_on_new_split"] and record["champion_accuracy_new_split"] is None
    assert "could not be re-scored on v2's" in mail.retrain_html(pipeline_id)


def test_a_champion_replaced_since_the_plan_is_not_rescored(
    origin: Origin, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline_id = planned_retrain(origin, tmp_path, 0.8)
    calls = champion_scores(monkeypatch, 0.5)
    register_champion("species", "shapes", 2, accuracy=0.99, commit="4567cdef" * 5)  # v2, promoted meanwhile
    decision = judge(retrain.prepared_attempt(pipeline_id), 0.95)

    registered = steps.register_model(decision.to_xcom(), None)

    assert calls == [] and (registered["version"], registered["is_champion"]) == (3, False)
    assert "planned against champion v1 but its champion is v2 now" in registered["promotion"]


def test_promote_against_a_figure_for_a_champion_no_longer_in_place_keeps_the_candidate_challenger(
    data_dir: Path,
) -> None:
    register_champion("species", "shapes", 1, accuracy=0.8)
    register_champion("species", "shapes", 1, accuracy=0.9, commit="4567cdef" * 5)  # v2 champion
    registry = ModelRegistry(settings.registry_dir())
    artifact = settings.data_dir() / "artifacts" / "candidate"
    artifact.mkdir(parents=True)
    (artifact / "model.joblib").write_bytes(b"candidate")
    candidate = registry.register("species", artifact, {"accuracy": 0.99}, {}, pipeline_run_id="run-3")

    result = registry.promote_if_not_worse("species", candidate, against=(1, 0.5, "shapes v2's split"))

    assert not result.candidate_is_champion and registry.champion("species").number == 2
    assert "compared with v1, which is no longer the champion" in result.reason


def test_a_run_without_events_retrains_on_the_version_its_params_name(data_dir: Path, tmp_path: Path) -> None:
    table_version(tmp_path, "shapes", 30)
    table_version(tmp_path, "shapes", 33)
    said: list[str] = []

    assert retrain.versions_to_retrain({}, "shapes", None) == [retrain.NewVersion("shapes", 2)]  # latest
    assert retrain.versions_to_retrain(None, "shapes", 1) == [retrain.NewVersion("shapes", 1)]
    assert retrain.versions_to_retrain({"a": []}, "shapes", "v1") == [retrain.NewVersion("shapes", 1)]
    assert retrain.versions_to_retrain({}, "", None, said.append) == []
    assert "nothing to retrain" in said[-1] and '"dataset"' in said[-1]
    # Asset events decide where there are any; Params beside them are named as unused.
    events = {"pushtrain-dataset://shapes": [event("shapes", 2)]}
    assert retrain.versions_to_retrain(events, "wine", 7, said.append) == [
        retrain.NewVersion("shapes", 2, "ab" * 32)
    ]
    assert said[-1].startswith("Params dataset='wine' version=7 not used")


@pytest.mark.parametrize(
    ("dataset", "version", "message"),
    [
        ("../etc", None, "Param dataset '../etc' is not a data set name"),
        ("wine", None, "Param dataset 'wine': the store has no version of it; register it first"),
        ("shapes", 3, r"Param version 3 of data set 'shapes' is not in the store \(it has v1, v2\)"),
        ("shapes", 0, "Param version 0"),
        ("shapes", True, "Param version True"),
        ("shapes", "latest", "Param version 'latest'"),
    ],
)
def test_params_naming_no_stored_version_are_an_error_saying_what_exists(
    data_dir: Path, tmp_path: Path, dataset: str, version: Any, message: str
) -> None:
    table_version(tmp_path, "shapes", 30)
    table_version(tmp_path, "shapes", 33)
    with pytest.raises(retrain.RetrainError, match=message):
        retrain.plan({}, "manual__1", lambda url: gitops.GitRemote(url=url), dataset=dataset, version=version)


def test_a_retrain_planned_from_params_is_the_one_an_event_plans(
    origin: Origin, data_dir: Path, tmp_path: Path
) -> None:
    table_version(tmp_path, "shapes", 30)
    table_version(tmp_path, "shapes", 33)
    sha = origin.commit({"model.py": TEMPLATE.read_text()}, "linear model", T0)
    register_champion("species", "shapes", 1, repo_url=str(origin.bare), commit=sha)

    [conf], failures = retrain.plan(
        {}, "manual__2026-11-30", lambda url: gitops.GitRemote(url=url), dataset="shapes", version=2
    )

    assert failures == []
    run = pipeline.Pipeline.load(conf["pipeline_id"])
    assert (run.model_name, run.commit, run.pinned_dataset) == ("species", sha, ("shapes", 2))
    assert conf["pipeline_id"] == retrain.retrain_pipeline_id(
        retrain.champion_of(ModelRegistry(settings.registry_dir()), "species"),
        retrain.NewVersion("shapes", 2),
        "manual__2026-11-30",
    )
    assert pipeline.Attempt.load(conf["pipeline_id"], 1).hparams == CHAMPION_HPARAMS
