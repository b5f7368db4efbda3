"""The pipeline adapts a pushed training script that does not meet the contract (issue 11, section 3).

Real git repositories as in test_steps_git (its helpers and fixtures are reused): ``detect_model_kind``
rewrites the entry in the pipeline's checkout, never in the user's branch; attempt 1 trains the adapted file;
the mails show the adaptation before the tweak; the branch ``pushtrain/<sha>`` gets the adapted file; a
refusal, and a non-contract file with ``adapt = false``, fail the first step with every line.
"""

# ruff: noqa: F811  (the fixtures imported from test_steps_git are parameters of the tests here)
from __future__ import annotations

from pathlib import Path

import pytest
from test_steps_git import (  # noqa: F401  (data_dir, digits, origin: fixtures)
    T0,
    Origin,
    checkout,
    data_dir,
    digits,
    git,
    judge,
    origin,
)

from pushtrain import datasets, pipeline, steps, tweak
from pushtrain.mail import budget_spent_mail, success_mail

SCRIPTS = Path(__file__).resolve().parents[1] / "fixtures" / "scripts"
DIGITS_TOML = 'target = 0.9\ndataset = "digits"\n'


def pushed(origin: Origin, script: str, toml: str = DIGITS_TOML) -> tuple[str, str]:
    """Commit a corpus script as model.py; the pipeline id of its checkout and the script's text."""
    text = (SCRIPTS / script).read_text()
    sha = origin.commit({"model.py": text, "pushtrain.toml": toml}, f"push {script} as is", T0)
    return checkout(origin, sha)["pipeline_id"], text


def test_a_plain_svc_script_is_adapted_in_the_checkout_and_trains_as_attempt_1(
    origin: Origin, digits: datasets.Manifest
) -> None:
    pipeline_id, original = pushed(origin, "svc_digits.py")

    assert steps.detect_model_kind(pipeline_id) == "svm"

    run = pipeline.Pipeline.load(pipeline_id)
    adapted = (pipeline.workspace_dir(pipeline_id) / "repo" / "model.py").read_text()
    assert adapted != original and "def build_estimator(hp):" in adapted
    assert tweak.read_hparams(adapted) == {"C": 10.0, "kernel": "rbf", "gamma": 0.001}
    assert run.adaptation_diff.startswith("--- a/model.py\n+++ b/model.py\n")
    assert run.adaptation_diff == tweak.unified_diff(original, adapted, "model.py")
    assert any("did not meet the model contract" in note for note in run.adaptation_notes)
    assert any(note.startswith("model.py, line ") for note in run.adaptation_notes)  # the script's lines
    assert "data set: digits, the one the script loaded" in run.adaptation_notes
    assert run.detection and any("sklearn.svm.SVC" in line for line in run.detection)
    # The user's branch is untouched; attempt 1 copies the adapted checkout.
    assert git(origin.bare, "show", f"{run.commit}:model.py") + "\n" == original
    steps.prepare_first_attempt(pipeline_id)
    assert (pipeline.attempt_dir(pipeline_id, 1) / "code" / "model.py").read_text() == adapted
    assert pipeline.Attempt.load(pipeline_id, 1).kind == "svm"


def test_a_retried_step_keeps_the_adaptation(origin: Origin, digits: datasets.Manifest) -> None:
    pipeline_id, _ = pushed(origin, "svc_digits.py")
    steps.detect_model_kind(pipeline_id)
    first = pipeline.Pipeline.load(pipeline_id)

    assert steps.detect_model_kind(pipeline_id) == "svm"  # the checkout holds the adapted file by now

    again = pipeline.Pipeline.load(pipeline_id)
    assert (again.adaptation_diff, again.adaptation_notes) == (first.adaptation_diff, first.adaptation_notes)
    assert again.adaptation_diff


def test_the_mails_show_the_adaptation_before_the_tweak_and_the_branch_gets_the_adapted_file(
    origin: Origin, digits: datasets.Manifest
) -> None:
    pipeline_id, _ = pushed(origin, "svc_digits.py")
    steps.detect_model_kind(pipeline_id)
    judge(steps.prepare_first_attempt(pipeline_id), 0.5)
    decision = judge(steps.prepare_tweaked_attempt(pipeline_id, 2), 0.6)

    _, body = budget_spent_mail(pipeline_id, "max_attempts reached")
    assert body.index("Adaptation of model.py") < body.index("Best attempt's change")

    registered = steps.register_model(decision.to_xcom(), origin.remote)
    _, body = success_mail(pipeline_id, registered)
    run = pipeline.Pipeline.load(pipeline_id)
    assert body.index("Adaptation of model.py") < body.index("The winning change to model.py")
    assert "def build_estimator(hp):" in body  # the adaptation diff itself
    branch = f"pushtrain/{run.commit[:8]}"
    pushed_file = git(origin.bare, "show", f"{branch}:model.py") + "\n"
    assert pushed_file == (pipeline.attempt_dir(pipeline_id, 2) / "code" / "model.py").read_text()
    assert "def build_estimator(hp):" in pushed_file
    assert git(origin.bare, "log", "-1", "--format=%s", branch).startswith(
        "pushtrain: adapted and tuned model.py"
    )


def test_an_adapted_file_goes_back_even_when_attempt_1_meets_the_target(
    origin: Origin, digits: datasets.Manifest
) -> None:
    pipeline_id, _ = pushed(origin, "svc_digits.py")
    steps.detect_model_kind(pipeline_id)
    decision = judge(steps.prepare_first_attempt(pipeline_id), 0.95)

    registered = steps.register_model(decision.to_xcom(), origin.remote)

    branch = f"pushtrain/{pipeline.Pipeline.load(pipeline_id).commit[:8]}"
    assert registered["pushed_branch"].startswith(branch)
    assert "def build_estimator(hp):" in git(origin.bare, "show", f"{branch}:model.py")
    assert "the adapted file met the target as it is" in success_mail(pipeline_id, registered)[1]


def test_a_script_that_loaded_another_data_set_keeps_the_configured_one_and_says_so(
    origin: Origin, digits: datasets.Manifest
) -> None:
    pipeline_id, _ = pushed(origin, "mnist_cnn_module_level.py")

    assert steps.detect_model_kind(pipeline_id) == "cnn"

    run = pipeline.Pipeline.load(pipeline_id)
    assert run.config.dataset == "digits"
    assert any(
        "the script loaded mnist5k, this run trains on digits" in note and 'dataset = "mnist5k"' in note
        for note in run.adaptation_notes
    )


def test_a_refusal_fails_the_step_with_every_line(origin: Origin, digits: datasets.Manifest) -> None:
    pipeline_id, original = pushed(origin, "epochs_from_argv.py")

    with pytest.raises(steps.UserFacingError) as caught:
        steps.detect_model_kind(pipeline_id)

    message = str(caught.value)
    assert "pushtrain adapt cannot rewrite it" in message
    assert "model.py, line 17: " in message and "comes from the command line" in message
    assert str(pipeline.workspace_dir(pipeline_id)) not in message  # the repository's path, not the host's
    assert (pipeline.workspace_dir(pipeline_id) / "repo" / "model.py").read_text() == original


def test_with_adapt_off_a_plain_script_fails_with_the_checks_problems_and_the_advice(
    origin: Origin, digits: datasets.Manifest
) -> None:
    pipeline_id, original = pushed(origin, "svc_digits.py", DIGITS_TOML + "adapt = false\n")

    with pytest.raises(steps.UserFacingError) as caught:
        steps.detect_model_kind(pipeline_id)

    message = str(caught.value)
    assert "adapt = false" in message and "python -m pushtrain adapt model.py -o model.py" in message
    assert "model.py, line " in message and "HPARAMS" in message
    assert (pipeline.workspace_dir(pipeline_id) / "repo" / "model.py").read_text() == original


def test_a_file_that_meets_the_contract_is_not_rewritten(
    origin: Origin, templates_dir: Path, digits: datasets.Manifest
) -> None:
    for toml in (DIGITS_TOML, DIGITS_TOML + "adapt = false\n"):
        template = (templates_dir / "forest_sklearn.py").read_text()
        sha = origin.commit({"model.py": template, "pushtrain.toml": toml}, "forest", T0)
        pipeline_id = checkout(origin, sha, run_id=f"manual__{len(toml)}")["pipeline_id"]

        assert steps.detect_model_kind(pipeline_id) == "forest"

        run = pipeline.Pipeline.load(pipeline_id)
        assert (run.adaptation_diff, run.adaptation_notes) == ("", [])
        assert (pipeline.workspace_dir(pipeline_id) / "repo" / "model.py").read_text() == template


NO_KIND = """HPARAMS = {"epochs": 1}


def build_model(hp, input_shape, num_classes):
    return None
"""


def test_a_file_of_no_kind_fails_first_with_why_no_kind_fits(
    origin: Origin, digits: datasets.Manifest
) -> None:
    sha = origin.commit({"model.py": NO_KIND, "pushtrain.toml": DIGITS_TOML}, "no kind", T0)
    pipeline_id = checkout(origin, sha)["pipeline_id"]

    with pytest.raises(steps.UserFacingError) as failure:
        steps.detect_model_kind(pipeline_id)

    message = str(failure.value)
    assert message.startswith("model.py: no model kind found") and "set `kind` in pushtrain.toml" in message
    assert (
        "pushtrain adapt cannot rewrite it" in message
        and str(pipeline.workspace_dir(pipeline_id)) not in message
    )


DUCK_TYPED = """import numpy as np

HPARAMS = {"seed": 0}


class Majority:
    def fit(self, x, y):
        self.label_ = int(np.bincount(y).argmax())
        return self

    def predict(self, x):
        return np.full(len(x), self.label_)


def build_estimator(hp):
    return Majority()
"""


def test_with_the_kind_set_a_model_of_the_files_own_making_meets_the_contract(
    origin: Origin, digits: datasets.Manifest
) -> None:
    sha = origin.commit(
        {"model.py": DUCK_TYPED, "pushtrain.toml": DIGITS_TOML + 'kind = "linear"\n'}, "duck", T0
    )
    pipeline_id = checkout(origin, sha)["pipeline_id"]

    assert steps.detect_model_kind(pipeline_id) == "linear"

    run = pipeline.Pipeline.load(pipeline_id)
    assert (run.adaptation_diff, run.adaptation_notes) == ("", [])
    assert (pipeline.workspace_dir(pipeline_id) / "repo" / "model.py").read_text() == DUCK_TYPED
