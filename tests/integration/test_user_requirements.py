"""Packages a model repository asks for: derived images built from real wheels, trained in real containers.

Each test works on a copy of a fixture repository in a temp dir, with a private cache directory (probe,
wheelhouse, build contexts), so the resolution and the download really happen here; the package index
must be reachable from the host, as it is for ``make images``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from pushtrain import images, userreqs
from pushtrain.containers import LOCAL, container_spec
from pushtrain.runner import contract
from pushtrain.sandbox import Sandbox, prepare_output_dir, run_container
from pushtrain.userreqs import UserRequirementsError, image_for_repository

REPOS = Path(__file__).resolve().parents[1] / "fixtures" / "repos"


@pytest.fixture(autouse=True)
def private_cache(training_images, tmp_path_factory, monkeypatch):
    """After the training images exist (their wheelhouse lives in the real cache), a cache of our own."""
    monkeypatch.setenv("PUSHTRAIN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def repository(tmp_path: Path, fixture: str, requirements: str | None = None) -> Path:
    """A copy of a fixture repository; ``requirements`` replaces (or, as "", removes) its requirements.txt."""
    root = tmp_path / "repo"
    shutil.copytree(REPOS / fixture, root)
    if requirements == "":
        (root / "requirements.txt").unlink()
    elif requirements is not None:
        (root / "requirements.txt").write_text(requirements)
    return root / "model.py"


def user_images() -> set[str]:
    listed = subprocess.run(
        [
            *images.docker_cli(),
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "--filter",
            "reference=pushtrain/user-*",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(listed.stdout.split())


def train_in(docker, image: str, model_file: Path, data: Path, out: Path, kind: str = "knn"):
    """One training through the runner in ``image``, described and sandboxed as every local run is."""
    run_key = f"test-userreqs-{uuid.uuid4().hex[:8]}"
    prepare_output_dir(out)
    spec = container_spec(
        LOCAL,
        name=f"pushtrain-{run_key}",
        run_key=run_key,
        kind=kind,
        code_dir=model_file.parent,
        entry=model_file.name,
        data_dir=data,
        output_dir=out,
        state_dir=out,
        image=image,
    )
    lines: list[str] = []
    outcome = run_container(docker, spec, Sandbox(), lines.append)
    return outcome, lines


def test_declared_package_gets_a_derived_image_built_once_that_trains(docker, digits, tmp_path):
    model = repository(tmp_path, "needs_tabulate")
    first = image_for_repository("knn", model)
    if not first.built:  # left by an earlier session: build it again so that this test sees a build
        subprocess.run([*images.docker_cli(), "image", "rm", first.tag], capture_output=True, check=True)
        first = image_for_repository("knn", model)
    assert first.built and first.derived
    assert first.tag.startswith("pushtrain/user-sklearn:")
    assert first.base_tag == images.image_for_kind("knn")
    assert list(first.resolved) == ["tabulate"]  # numpy>=2 was satisfied by the image: nothing added for it
    assert first.declared == ("tabulate>=0.9", "numpy>=2")
    assert 0 < first.wheels_bytes < 1_000_000

    second = image_for_repository("knn", model)
    assert not second.built
    assert (second.tag, second.image_id, second.resolved) == (first.tag, first.image_id, first.resolved)
    assert docker.inspect_image(second.tag)["Created"] == docker.inspect_image(first.tag)["Created"]

    derived, base = docker.inspect_image(first.tag)["Config"], docker.inspect_image(first.base_tag)["Config"]
    assert derived["User"] == base["User"] == "10001:10001"
    assert derived["Entrypoint"] == base["Entrypoint"] and derived["Env"] == base["Env"]
    assert derived["WorkingDir"] == base["WorkingDir"] and derived["Cmd"] == base["Cmd"]
    assert derived["Labels"][userreqs.DERIVED_FROM_ID_LABEL] == first.base_image_id
    assert json.loads(derived["Labels"][userreqs.USER_REQUIREMENTS_LABEL]) == first.resolved
    assert len(docker.history(first.tag)) == len(docker.history(first.base_tag)) + 1  # one layer added
    assert not docker.containers(
        all=True, filters={"name": "pushtrain-build-"}
    )  # the build container is gone
    assert first.lineage()["user_requirements"]["resolved"] == first.resolved
    assert first.lineage()["image_id"] == first.image_id

    outcome, lines = train_in(docker, first.tag, model, digits.train_dir, tmp_path / "out")
    assert outcome.succeeded, "\n".join(lines[-30:])
    assert any(line.startswith("| n_neighbors") for line in lines)  # tabulate's table, printed by the model
    assert contract.read_metrics(tmp_path / "out")["accuracy"] > 0.9
    subprocess.run([*images.docker_cli(), "image", "rm", first.tag], capture_output=True, check=True)


def test_without_the_declaration_the_missing_package_is_named(docker, digits, tmp_path):
    model = repository(tmp_path, "needs_tabulate", requirements="")
    plain = image_for_repository("knn", model)
    assert not plain.derived and plain.tag == images.image_for_kind("knn") and plain.resolved == {}
    outcome, lines = train_in(docker, plain.tag, model, digits.train_dir, tmp_path / "out")
    assert not outcome.succeeded
    assert outcome.exit_code == contract.EXIT_LOAD_ERROR
    assert "No module named 'tabulate'" in contract.read_error(tmp_path / "out", outcome.exit_code)["message"]


def test_common_companions_are_built_in(docker, digits, tmp_path, training_images):
    model = repository(tmp_path, "uses_companions")
    plain = image_for_repository("knn", model)
    assert not plain.derived
    outcome, lines = train_in(docker, plain.tag, model, digits.train_dir, tmp_path / "out")
    assert outcome.succeeded, "\n".join(lines[-30:])
    assert any(line.startswith("companions: pandas 3.") and "backend agg" in line.lower() for line in lines)
    imports = subprocess.run(
        [
            *images.docker_cli(),
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            userreqs.VENV_PYTHON,
            training_images["tensorflow"],
            "-c",
            "import matplotlib, pandas, PIL; print(pandas.__version__, PIL.__version__, matplotlib.get_backend())",
        ],
        capture_output=True,
        text=True,
    )
    assert imports.returncode == 0, imports.stderr
    assert imports.stdout.split()[2].lower() == "agg"


def test_requirements_the_image_satisfies_need_no_derived_image(tmp_path):
    model = repository(tmp_path, "needs_tabulate", requirements="pandas>=3\nnumpy\nscikit-learn>=1.5\n")
    before = user_images()
    result = image_for_repository("knn", model)
    assert not result.derived and not result.built and result.resolved == {}
    assert result.declared == ("pandas>=3", "numpy", "scikit-learn>=1.5")
    assert user_images() == before


def test_a_conflicting_pin_is_refused_before_anything_is_built(tmp_path):
    model = repository(tmp_path, "needs_tabulate", requirements="tabulate\nnumpy==1.26.4\n")
    before = user_images()
    with pytest.raises(UserRequirementsError) as raised:
        image_for_repository("knn", model)
    message = str(raised.value)
    assert "line 2 ('numpy==1.26.4')" in message and "numpy==2.4.6" in message
    assert user_images() == before
    assert not (userreqs.settings.cache_dir() / "user-wheelhouse").exists()  # nothing resolved or downloaded


def test_a_package_without_a_wheel_is_refused(tmp_path):
    # docopt 0.6.2 is published as a source distribution only.
    model = repository(tmp_path, "needs_tabulate", requirements="docopt==0.6.2\n")
    before = user_images()
    with pytest.raises(
        UserRequirementsError, match="docopt has no wheel for CPython 3.11 on Linux .*only a source"
    ):
        image_for_repository("knn", model)
    assert user_images() == before


def test_the_size_cap_refuses(tmp_path, monkeypatch):
    monkeypatch.setenv("PUSHTRAIN_USER_REQUIREMENTS_MAX_MB", "0.01")  # 10 kB: tabulate's wheel is bigger
    model = repository(tmp_path, "needs_tabulate")
    with pytest.raises(
        UserRequirementsError, match=r"MB of wheels, over the cap of 0\.01 MB \(largest: tabulate-"
    ):
        image_for_repository("knn", model)
