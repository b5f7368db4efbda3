"""What each pipeline task does, as plain functions the DAG files call (and tests call without a scheduler).

Errors a user can fix raise ``UserFacingError`` with the problem and the fix; the DAG turns them into a
failed task (no retry: retrying bad input changes nothing) and a failure mail.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pushtrain import gitops, ledger, pipeline, settings
from pushtrain.pipeline import (
    Action,
    AirflowRun,
    Attempt,
    DatasetUsed,
    Decision,
    Evaluation,
    Pipeline,
    PreparedAttempt,
    Summary,
    Timings,
    TrainingMetrics,
)
from pushtrain.runner import contract

log = logging.getLogger(__name__)

HISTORY_WALK_LIMIT = 50  # commits inspected behind a new head when marking skipped ones as superseded
# The training task's XCom "status" for a tweak whose model could not be built, and the evaluation task's
# for an attempt it therefore did not evaluate: the attempt is recorded as failed and the loop goes on.
UNBUILDABLE = "unbuildable"
NOT_EVALUATED = "not_evaluated"


class UserFacingError(Exception):
    """Bad input from the model repository or the trigger: the message says what is wrong and how to fix it."""


class NothingToTrain(Exception):
    """This run has no commit to train (already trained, or no commit at its logical date)."""


# --- 1. the commit -------------------------------------------------------------------------------------


def find_commit_to_train(
    *,
    remote: gitops.GitRemote,
    branch: str,
    dag_run_id: str,
    run_type: str,
    data_interval_end: datetime | None,
    explicit_commit: str | None,
) -> dict | None:
    """The commit this run trains, claimed in the ledger; None while a live run should keep waiting.

    The rule: a live run takes the branch head if nobody took it, and marks the untrained commits between
    it and the last trained one as superseded (when several pushes arrive while one trains, the newest
    wins). A backfill run takes the head as of its logical date. An explicit commit is trained as asked.
    Raises ``NothingToTrain`` where waiting cannot help.
    """
    repo = gitops.fetch(remote)
    if explicit_commit:
        sha = gitops.resolve_commit(repo, explicit_commit)
        ledger.claim(remote.display_url, sha, dag_run_id)  # recorded; an explicit request trains regardless
        return _found(remote, branch, sha, [])
    already_mine = ledger.claimed_by(remote.display_url, dag_run_id)
    if already_mine:  # a retry of this run: the commit it took before, whatever the branch did since
        return _found(remote, branch, already_mine, [])
    if _is_backfill(run_type):
        sha = gitops.head_at(repo, branch, data_interval_end) if data_interval_end else None
        if sha is None:
            raise NothingToTrain(f"branch {branch} had no commit at {data_interval_end}")
        if not ledger.claim(remote.display_url, sha, dag_run_id):
            raise NothingToTrain(
                f"commit {sha[:8]} (head of {branch} at {data_interval_end}) was trained already"
            )
        return _found(remote, branch, sha, [])

    sha = gitops.branch_head(repo, branch)
    if sha is None:
        try:  # a misspelt branch would otherwise be waited for until the sensor times out, saying nothing
            gitops.require_branch(repo, branch, remote)
        except gitops.GitError as exc:
            raise UserFacingError(str(exc)) from None
        return None  # an empty repository: its first push is what we wait for
    if not ledger.claim(remote.display_url, sha, dag_run_id):
        return None
    skipped = []
    for commit in repo.iter_commits(sha, first_parent=True, max_count=HISTORY_WALK_LIMIT, skip=1):
        if ledger.is_taken(remote.display_url, commit.hexsha):
            break
        skipped.append(commit.hexsha)
    ledger.mark_superseded(remote.display_url, skipped, sha, dag_run_id)
    return _found(remote, branch, sha, skipped)


def _is_backfill(run_type: Any) -> bool:
    """True for a backfill run, however the run type is spelled.

    In a task the context's ``dag_run.run_type`` is the Task SDK's ``DagRunType`` enum, whose ``str()`` is
    ``"DagRunType.BACKFILL"`` (not its value, as the core enum's is): accept the value, the enum and that.
    """
    text = str(getattr(run_type, "value", run_type)).lower()
    return text.rpartition(".")[2] in ("backfill", "backfill_job")


def _found(remote: gitops.GitRemote, branch: str, sha: str, superseded: list[str]) -> dict:
    return {"repo_url": remote.display_url, "branch": branch, "commit": sha, "superseded": superseded}


def checkout_commit(found: dict, params: dict, dag_run_id: str, remote: gitops.GitRemote) -> dict:
    """Check the commit out into the pipeline's workspace, read its config, write ``pipeline.json``."""
    repo = gitops.fetch(remote)
    sha = found["commit"]
    pipeline_id = pipeline.pipeline_id_for(sha, dag_run_id)
    workspace = gitops.checkout(repo, sha, pipeline.workspace_dir(pipeline_id) / "repo")
    overrides = {
        "target": params.get("target"),
        "max_attempts": params.get("max_attempts"),
        "kind": params.get("kind"),
        "strategy": params.get("strategy"),
    }
    try:
        config = pipeline.load_config(workspace, overrides)
    except pipeline.ConfigError as exc:
        raise UserFacingError(str(exc)) from None
    manifest = _resolve_dataset(config, workspace, sha, remote.display_url)
    info = gitops.commit_info(repo, sha)
    repo_name = Path(remote.display_url.rstrip("/")).name.removesuffix(".git") or "model"
    Pipeline(
        pipeline_id=pipeline_id,
        repo_url=remote.display_url,
        branch=found["branch"],
        commit=sha,
        author_name=info.author_name,
        author_email=info.author_email,
        commit_message=info.message,
        kind="",
        config=config,
        origin_dag_run_id=dag_run_id,
        model_name=config.model_name or gitops.safe_name(repo_name),
        dataset_name=manifest.name,
        dataset_version=manifest.version,
    ).save()
    return {"pipeline_id": pipeline_id, "commit": sha}


def _resolve_dataset(config: pipeline.PipelineConfig, workspace: Path, sha: str, repository: str) -> Any:
    """The data set version the pipeline will train on: a ``repo:`` folder imported from the checkout (a new
    version only if its content is new), else the named set's latest version (a bundled one exported on
    first use). Bad data fails here, the first task that sees it; a failed import leaves nothing behind."""
    from pushtrain import datasets
    from pushtrain.dataset_files import DatasetError

    try:
        return datasets.resolve(
            config.dataset,
            checkout=workspace,
            commit=sha,
            repository=repository,
            options=config.import_options(),
        )
    except DatasetError as exc:
        raise UserFacingError(f"{pipeline.CONFIG_FILE}: dataset = {config.dataset!r}: {exc}") from None


# --- 2. the kind ---------------------------------------------------------------------------------------


def detect_model_kind(pipeline_id: str) -> str:
    from pushtrain.detect import DetectionError, detect_kind

    run = Pipeline.load(pipeline_id)
    checkout = pipeline.workspace_dir(pipeline_id) / "repo"
    entry = checkout / run.config.entry
    if not entry.is_file():
        raise UserFacingError(
            f"the commit has no model file {run.config.entry!r}: add it, or set `entry` in "
            f"{pipeline.CONFIG_FILE} to your model file's path"
        )
    if not entry.resolve().is_relative_to(checkout.resolve()):
        raise UserFacingError(
            f"the model file {run.config.entry!r} is a link out of the repository: commit "
            "the file itself, or set `entry` to a file inside the repository"
        )
    # Before anything runs: the file meets the contract, or adapt rewrites it (the kind is then detected on
    # the rewritten file, which attempt 1 trains), or the run fails here with every problem and its line.
    run = _meet_the_contract(run, entry)
    if run.config.kind != "auto":
        run = run.changed(kind=run.config.kind, detection=[f"kind set to {run.config.kind} by configuration"])
    else:
        try:
            detection = detect_kind(entry)
        except DetectionError as exc:
            raise UserFacingError(str(exc).replace(str(entry), run.config.entry)) from None
        run = run.changed(kind=detection.kind, detection=[str(e) for e in detection.evidence])
    run.save()
    return run.kind


_CONTRACT = (
    "the model contract (a literal HPARAMS dict and build_model(hp, input_shape, num_classes) or "
    "build_estimator(hp), nothing that trains or downloads at import; include/model_templates/ has examples)"
)


def _meet_the_contract(run: Pipeline, entry: Path) -> Pipeline:
    """The entry file as it meets the contract: unchanged when it does, else rewritten by ``pushtrain adapt``.

    The rewrite goes over the entry in the pipeline's checkout (``workspaces/<id>/repo``), which attempt 1
    copies: the user's branch is not touched, the branch ``pushtrain/<sha>`` gets the adapted file. The diff
    and one line per change are kept in ``pipeline.json`` (the mail and the pipeline page show them).

    The data set is not changed here: the one the configuration named (or the default) was pinned at
    checkout. When the script loaded another one, a note says which and how to name it in pushtrain.toml.
    With ``adapt = false`` a file that does not meet the contract fails with the check's problems. With the
    kind set in the configuration, a model of the file's own making (a duck-typed estimator) meets it.
    """
    from pushtrain import adapt

    name = run.config.entry
    kind_is_set = run.config.kind != "auto"
    if not run.config.adapt or kind_is_set:
        problems = _contract_problems(entry, kind_is_set=kind_is_set)
        if not problems:
            return run
    if not run.config.adapt:
        raise UserFacingError(
            f"{name} does not meet {_CONTRACT}, and adapt = false in {pipeline.CONFIG_FILE}:\n"
            + "".join(f"  {name}, {problem}\n".replace(str(entry), name) for problem in problems)
            + f"Fix these lines, set adapt = true in {pipeline.CONFIG_FILE} to let pushtrain rewrite the file "
            f"for each run, or run `python -m pushtrain adapt {name} -o {name}` and commit the result."
        )
    try:
        adaptation = adapt.adapt_bounded(entry)
    except adapt.AdaptRefused as refusal:
        raise UserFacingError(
            ("" if kind_is_set else _kind_problem(entry, name))
            + f"{name} does not meet {_CONTRACT}, and pushtrain adapt cannot rewrite it:\n"
            + "".join(f"  {name}, {problem}\n".replace(str(entry), name) for problem in refusal.problems)
            + f"Change these lines and push again (`python -m pushtrain adapt {name}` shows the result "
            "without running anything), or write the file to the contract yourself."
        ) from None
    if not adaptation.changed:
        return run  # it meets the contract (or a retry of this task finds it adapted and recorded already)
    notes = [
        f"{name} did not meet the model contract: pushtrain adapt rewrote it for this run "
        "(your branch is unchanged; the adapted file trains as attempt 1)",
        *(f"{name}, {change}" for change in adaptation.changes),
        f"{name}: kind {adaptation.kind}, {adaptation.builder}(), knobs: "
        + (", ".join(f"{knob}={value!r}" for knob, value in adaptation.hparams.items()) or "none"),
        _dataset_note(run.config.dataset, adaptation),
    ]
    for note in notes:
        log.info("%s", note)
    run = run.changed(adaptation_diff=adaptation.diff(name), adaptation_notes=notes)
    run.save()  # before the file: a retry that finds the file adapted finds the record too
    # A link inside the repository (checked by the caller) is written through: its target is the model file.
    entry.resolve().write_text(adaptation.adapted, encoding="utf-8")
    return run


def _kind_problem(entry: Path, name: str) -> str:
    """Why no kind fits the file, as its first line, when that is so: the likelier fix than the contract's."""
    from pushtrain.detect import DetectionError, detect_kind

    try:
        detect_kind(entry)
    except DetectionError as exc:
        return str(exc).replace(str(entry), name) + "\n"
    return ""


def _dataset_note(configured: str, adaptation: Any) -> str:
    """What the script loaded against what this run trains on (the configuration's data set, never changed)."""
    if adaptation.dataset == configured:
        return f"data set: {configured}, the one the script loaded"
    if adaptation.dataset:
        return (
            f"data set: the script loaded {adaptation.dataset}, this run trains on {configured} (the "
            f"`dataset` of {pipeline.CONFIG_FILE}, or its default): to train on the script's, set "
            f'dataset = "{adaptation.dataset}" in {pipeline.CONFIG_FILE}'
        )
    return f"data set: this run trains on {configured}; {adaptation.dataset_note}"


# The contract check in a child process with adapt's limits (a huge or pathological file cannot hang the
# task); it prints CheckResult.to_json_dict.
_CHECK_CHILD = (
    "import json, resource, sys\n"
    "limit = int(sys.argv[2]) * 1024 * 1024\n"
    "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
    "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
    "from pushtrain import contract_check\n"
    "print(json.dumps(contract_check.check_file(sys.argv[1]).to_json_dict()))\n"
)


def _contract_problems(entry: Path, *, kind_is_set: bool = False) -> list[str]:
    """Every way the file misses the contract (``pushtrain check``), each at its line; empty if it meets it.

    With the kind set in the configuration, a model pushtrain does not recognise is not a problem: the
    configuration says how to train it.
    """
    from pushtrain import adapt
    from pushtrain.contract_check import UNKNOWN_MODEL, Problem

    environment = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": os.environ.get("PATH", "")}
    try:
        completed = subprocess.run(
            [sys.executable, "-c", _CHECK_CHILD, str(entry), str(adapt.DEFAULT_MEMORY_MB)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=environment,
            timeout=adapt.DEFAULT_TIMEOUT_S,
            check=False,
        )
        payload = json.loads(completed.stdout)
        return [
            str(Problem(item["line"], item["message"]))
            for item in payload["problems"]
            if not (kind_is_set and UNKNOWN_MODEL in item["message"])
        ]
    except (subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
        return ["the contract check could not finish: the file is unusually large or complex"]


# --- 3. the attempt ------------------------------------------------------------------------------------


def _copy_code(source: Path, destination: Path) -> None:
    shutil.rmtree(destination, ignore_errors=True)
    # Links stay links: following them would copy files of this host (a link to ~/.netrc, say) into the
    # code dir that training containers mount.
    shutil.copytree(source, destination, symlinks=True, ignore=shutil.ignore_patterns(".git"))


def _prepared(run: Pipeline, attempt: int, hparams: dict[str, Any], **tweak: Any) -> dict:
    """Write the attempt's record as prepared and return the XCom that sends it to training."""
    record = Attempt(
        pipeline_id=run.pipeline_id,
        attempt=attempt,
        status="prepared",
        repo_url=run.repo_url,
        commit=run.commit,
        kind=run.kind,
        model_file=run.config.entry,
        hparams=hparams,
        **tweak,
    )
    record.save()
    return PreparedAttempt(
        pipeline_id=run.pipeline_id, attempt=attempt, kind=run.kind, warm_start_from=record.warm_start_from
    ).to_xcom()


def prepare_first_attempt(pipeline_id: str) -> dict:
    """Attempt 1 trains the code as committed; its hyperparameters are known once it trained.

    The packages its ``requirements.txt`` declares are resolved here, once per pipeline (tweaks never change
    them): every attempt trains and evaluates in the image that has them.
    """
    run = Pipeline.load(pipeline_id)
    _copy_code(pipeline.workspace_dir(pipeline_id) / "repo", pipeline.attempt_dir(pipeline_id, 1) / "code")
    run = _with_training_image(run)
    return _prepared(run, 1, {})


def _with_training_image(run: Pipeline) -> Pipeline:
    from pushtrain import userreqs

    model_file = pipeline.attempt_dir(run.pipeline_id, 1) / "code" / run.config.entry
    try:
        image = userreqs.image_for_repository(run.kind, model_file)
    except userreqs.UserRequirementsError as exc:
        raise UserFacingError(str(exc)) from None
    run = run.changed(training_image=image.lineage() if image.derived else {})
    run.save()
    return run


def prepare_tweaked_attempt(pipeline_id: str, attempt: int) -> dict:
    """Ask the strategy for new hyperparameters and write them into a copy of the best attempt's code.

    A strategy with nothing left to try is a normal end of the loop: the XCom says ``stop`` with the reason,
    and the attempt is neither written nor trained.
    """
    from pushtrain import strategies, tweak

    run = Pipeline.load(pipeline_id)
    records = [r for r in pipeline.attempt_records(pipeline_id) if r.attempt < attempt]
    best = pipeline.best_record(records)
    if best is None:
        raise UserFacingError(f"pipeline {pipeline_id} has no evaluated attempt before {attempt}")
    history = pipeline.strategy_history(records)
    try:
        updates = strategies.propose(
            run.config.strategy, run.kind, history, int(run.commit[:8], 16), target=run.config.target
        )
    except strategies.StrategyExhaustedError as exc:
        return PreparedAttempt(
            pipeline_id=pipeline_id,
            attempt=attempt,
            kind=run.kind,
            action="stop",
            reason=f"strategy {run.config.strategy} exhausted: {exc}",
        ).to_xcom()
    base_code = pipeline.attempt_dir(pipeline_id, best.attempt) / "code"
    original = (pipeline.attempt_dir(pipeline_id, 1) / "code" / run.config.entry).read_text()
    try:
        tweaked = tweak.apply_hparams((base_code / run.config.entry).read_text(), updates)
    except tweak.TweakError as exc:
        raise UserFacingError(f"cannot tweak {run.config.entry}: {exc}") from None
    code = pipeline.attempt_dir(pipeline_id, attempt) / "code"
    _copy_code(base_code, code)
    (code / run.config.entry).write_text(tweaked)
    hparams = {**best.hparams, **updates}
    # Only epochs grew from an earlier attempt: the runner continues that model instead of starting over.
    parent = strategies.warm_start_parent(history, hparams)
    return _prepared(
        run,
        attempt,
        hparams,
        tweak_diff=tweak.unified_diff(original, tweaked, run.config.entry),
        tweak_updates=dict(updates),
        tweak_reason=strategies.proposal_reason(updates),
        based_on_attempt=best.attempt,
        warm_start_from=parent.attempt if parent else None,
    )


def judge_attempt(prepared: dict, trained: dict | None, evaluation: dict | None, airflow_run: dict) -> dict:
    """Complete the attempt's record (evaluated, or failed when its model could not be built) and decide.

    ``trained`` and ``evaluation`` are the XComs of the training and evaluation tasks; both are None when
    ``prepared`` said stop (the strategy had nothing left to try), which ends the loop without an attempt.
    """
    from pushtrain.datasets import ensure_dataset

    plan = PreparedAttempt.from_xcom(prepared, "prepare_attempt")
    run = Pipeline.load(plan.pipeline_id)
    if plan.action == "stop":
        return Decision(
            pipeline_id=plan.pipeline_id,
            attempt=plan.attempt - 1,
            action=Action.STOP,
            reason=plan.reason,
            accuracy=None,
            target=run.config.target,
        ).to_xcom()
    trained, evaluation = trained or {}, evaluation or {}
    manifest = ensure_dataset(*run.pinned_dataset)
    judged = {
        "dataset": DatasetUsed(
            name=manifest.name,
            split_version=manifest.split_version,
            split=manifest.split,
            train_sha256=manifest.train_sha256,
            test_sha256=manifest.test_sha256,
        ),
        "image": trained.get("image"),
        "image_id": trained.get("image_id"),
        "container_restarts": trained.get("container_restarts", 0),
        "airflow": AirflowRun.parse(airflow_run, "the Airflow run"),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    record = Attempt.load(plan.pipeline_id, plan.attempt)
    failure = trained.get("failure") if trained.get("status") == UNBUILDABLE else None
    if failure is None and evaluation.get("status") == NOT_EVALUATED:
        failure = evaluation.get("reason") or "not evaluated"
    if failure is not None:
        record = record.changed(status="failed", reason=f"the model could not be built: {failure}", **judged)
    else:
        out_dir = pipeline.output_dir(plan.pipeline_id, plan.attempt)
        metrics = contract.read_metrics(out_dir)
        scores = Evaluation.parse(evaluation, "the XCom of evaluate", known_only=True)
        record = record.changed(
            status="evaluated",
            hparams=metrics["hparams"],
            model_file_sha256=metrics["code_sha256"],
            training_metrics=TrainingMetrics.parse(
                metrics, str(out_dir / contract.METRICS_FILE), known_only=True
            ),
            warm_start_epochs=metrics.get("warm_start_epochs", 0),
            training_history=metrics["history"],
            n_train=metrics["n_train"],
            evaluation=scores,
            timings=Timings(
                train_seconds=metrics["train_seconds"],
                train_container_seconds=trained["container_wall_seconds"],
                evaluate_container_seconds=scores.container_wall_seconds,
            ),
            **judged,
        )
    record.save()
    return pipeline.decide(run.config, pipeline.attempt_records(plan.pipeline_id), plan.attempt).to_xcom()


# --- 4. the outcome ------------------------------------------------------------------------------------


def register_model(decision: dict, remote: gitops.GitRemote | None) -> dict:
    """Run the repository's model tests, register the winning attempt, make it champion if the tests pass and
    it is not worse (else challenger), push the tuned file back."""
    from pushtrain import rescore
    from pushtrain.datasets import ensure_dataset
    from pushtrain.model_tests import run_model_tests
    from pushtrain.registry import CHALLENGER, ModelRegistry

    verdict = Decision.from_xcom(decision, "judge_attempt")
    pipeline_id, attempt = verdict.pipeline_id, verdict.attempt
    run = Pipeline.load(pipeline_id)
    record = Attempt.load(pipeline_id, attempt)
    if record.evaluation is None:
        raise ValueError(
            f"attempt {attempt} of {pipeline_id} was not evaluated ({record.status}): nothing to register"
        )
    model_dir = pipeline.output_dir(pipeline_id, attempt) / contract.MODEL_DIR
    tests = run_model_tests(
        tests_file=pipeline.workspace_dir(pipeline_id) / "repo" / run.config.model_tests,
        model_dir=model_dir,
        held_out_dir=ensure_dataset(*run.pinned_dataset).test_dir,
        out_dir=pipeline.attempt_dir(pipeline_id, attempt) / "model-tests",
        kind=record.kind,
        container_name=pipeline.container_name(pipeline_id, attempt, "model-tests"),
    )
    registry = ModelRegistry(settings.registry_dir())
    against, rescore_failure, lineage = None, "", record.lineage(run)
    # A retrain compares with the champion scored on this (new) held-out split, not with its old figure.
    if rescore.is_retrain(pipeline_id):
        try:
            rescored = rescore.rescore_champion(pipeline_id, registry)
            against = (
                rescored["champion_version"],
                rescored["champion_accuracy_new_split"],
                f"{rescored['dataset']} v{rescored['to_version']}'s held-out split",
            )
        except rescore.RescoreError as exc:
            rescore_failure = f"not promoted: the champion could not be re-scored on the new split: {exc}"
        lineage["retrain"] = rescore.retrain_record(pipeline_id)
    version = registry.register(
        run.model_name,
        model_dir,
        record.evaluation.model_dump(),
        lineage,
        pipeline_run_id=pipeline_id,
    )
    by = f"pipeline:{pipeline_id}"
    if tests.ran:
        registry.set_tag(run.model_name, version, "model_tests", "passed" if tests.passed else "failed")
    current = registry.champion(run.model_name)
    awaiting_approval = False
    # promotion = "approve": a person decides (the approve_model task waits for them); until then, challenger.
    # A retried task finds the version champion already only if someone promoted it meanwhile: left as it is.
    if tests.passed and run.config.promotion == "approve":
        awaiting_approval = current is None or current.number != version.number
        promotion_reason = _awaiting_approval(run, current, version, rescore_failure)
        is_champion = not awaiting_approval
        if awaiting_approval:
            registry.set_alias(run.model_name, CHALLENGER, version, reason=promotion_reason, by=by)
    # No fair comparison with a champion in place: challenger, a person may promote it. (No champion, or this
    # version already champion on a retried task: the usual rule says so.)
    elif tests.passed and rescore_failure and current is not None and current.number != version.number:
        promotion_reason, is_champion = rescore_failure, False
        registry.set_alias(run.model_name, CHALLENGER, version, reason=promotion_reason, by=by)
    elif tests.passed:
        promotion = registry.promote_if_not_worse(run.model_name, version, by=by, against=against)
        promotion_reason, is_champion = promotion.reason, promotion.candidate_is_champion
    else:  # the model tests hold it back whatever its accuracy: challenger, never champion
        promotion_reason = f"not promoted, {tests.summary()}"
        registry.set_alias(run.model_name, CHALLENGER, version, reason=promotion_reason, by=by)
        is_champion = False

    pushed = None
    # An adapted file goes back even when attempt 1 won: the user gets the file that meets the contract.
    if (attempt > 1 or run.adaptation_diff) and run.config.commit_back and remote is not None:
        branch = f"pushtrain/{run.commit[:8]}"
        workspace = pipeline.workspace_dir(pipeline_id) / "repo"
        shutil.copyfile(
            pipeline.attempt_dir(pipeline_id, attempt) / "code" / run.config.entry,
            workspace / run.config.entry,
        )
        sha = gitops.push_model_branch(
            remote,
            workspace,
            run.config.entry,
            branch,
            f"pushtrain: {_what_was_done(run, attempt)} {run.config.entry} (attempt {attempt}, accuracy "
            f"{record.accuracy:.4f})\n\n"
            + ("Rewritten by pushtrain adapt to meet the model contract.\n\n" if run.adaptation_diff else "")
            + record.tweak_diff,
        )
        pushed = f"{branch} ({sha[:8]})" if sha else None
    return {
        "pipeline_id": pipeline_id,
        "attempt": attempt,
        "model_name": run.model_name,
        "version": version.number,
        "path": str(version.path),
        "promotion": promotion_reason,
        "is_champion": is_champion,
        "uri": version.uri,
        "model_tests": tests.to_xcom(),
        "pushed_branch": pushed,
        "accuracy": record.accuracy,
        "awaiting_approval": awaiting_approval,
        "approval_timeout_hours": run.config.approval_timeout_hours if awaiting_approval else None,
    }


def _awaiting_approval(run: Pipeline, current: Any, version: Any, rescore_failure: str) -> str:
    """The challenger move's reason under ``promotion = "approve"``: what the person is asked to decide."""
    if current is not None and current.number == version.number:
        return f"{version.label} is already champion"
    against = f"champion {current.label}" if current is not None else "no champion yet"
    note = f" ({rescore_failure.removeprefix('not promoted: ')})" if rescore_failure else ""
    return (
        f"awaiting approval: {version.label} is challenger until a person approves it in Airflow "
        f'(promotion = "approve" in {pipeline.CONFIG_FILE}; {against}{note}); no answer within '
        f"{run.config.approval_timeout_hours:g} h keeps it challenger"
    )


def _what_was_done(run: Pipeline, attempt: int) -> str:
    if not run.adaptation_diff:
        return "tuned"
    return "adapted" if attempt == 1 else "adapted and tuned"


def report_budget_spent(decision: dict) -> dict:
    """Why the loop stopped below target and its best attempt (the mail reads the records)."""
    verdict = Decision.from_xcom(decision, "judge_attempt")
    records = pipeline.attempt_records(verdict.pipeline_id)
    best = pipeline.best_record(records)
    return {
        "pipeline_id": verdict.pipeline_id,
        "reason": verdict.reason,
        "attempts": len(records),
        "best_attempt": best.attempt if best else None,
        "best_accuracy": best.accuracy if best else None,
    }


def finish_pipeline(pipeline_id: str | None, attempt: int, decision: dict | None) -> list[str]:
    """Clean up once the pipeline ended here (target met, stopped, or failed); not when it goes on."""
    if not pipeline_id or not pipeline.pipeline_dir(pipeline_id).exists():
        return []  # failed before a pipeline existed (no commit, bad input): nothing to clean
    verdict = Decision.from_xcom(decision, "judge_attempt") if decision else None
    if verdict and verdict.action == Action.RETRAIN:
        return []
    removed = pipeline.cleanup(pipeline_id)
    if verdict:
        summary = Summary(
            pipeline_id=pipeline_id,
            outcome=verdict.action.value,
            reason=verdict.reason,
            ended_after_attempt=verdict.attempt,
        )
    else:
        summary = Summary(
            pipeline_id=pipeline_id,
            outcome="failed",
            ended_after_attempt=attempt,
            reason=f"a task of attempt {attempt} failed: see its log",
        )
    summary.save()
    return removed
