"""Entry point of the training images: ``python -m pushtrain.runner {train,predict,serve,proxy} ...``.

Exit codes and ``error.json`` are documented in ``pushtrain.runner.contract``: every failure the runner
understands leaves ``error.json`` in the output directory (its category, whether a restart can help, the
message and the fix) and prints the same on stderr, what to do first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from pushtrain.kinds import KINDS
from pushtrain.runner import contract


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pushtrain-runner", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one attempt (resumes from its checkpoints)")
    train.add_argument("--model", required=True, type=Path, help="the user's model file (read-only mount)")
    train.add_argument(
        "--data",
        required=True,
        type=Path,
        help="training split: <data>/<label>/*.png, or <data>/table.csv with schema.json",
    )
    train.add_argument("--out", required=True, type=Path, help="this attempt's writable output directory")
    train.add_argument("--hparams", default="{}", help="JSON object overriding the file's HPARAMS")
    train.add_argument("--kind", choices=KINDS, help="model kind (default: from the builder name)")
    train.add_argument("--run-key", default="local", help="pipeline run and attempt; keys the checkpoints")
    train.add_argument(
        "--warm-start",
        type=Path,
        help="an earlier attempt's output dir: continue its model if only epochs grew",
    )
    train.add_argument(
        "--no-checkpoints",
        action="store_true",
        help="skip per-epoch checkpoints (benchmarks only: such a run cannot resume)",
    )

    predict = commands.add_parser("predict", help="predict a label-blind view; the platform scores it")
    predict.add_argument("--model-dir", required=True, type=Path, help="the attempt's model/ directory")
    predict.add_argument("--data", required=True, type=Path, help="label-blind images: <data>/<id>.png")
    predict.add_argument("--out", required=True, type=Path, help="where predictions.json is written")
    predict.add_argument("--model", type=Path, help="the model file, for classes and layers it defines")

    serve = commands.add_parser("serve", help="answer predictions over HTTP (MLflow scoring protocol)")
    serve.add_argument("--model-dir", required=True, type=Path, help="a registered version's artifact/ dir")
    serve.add_argument("--model", type=Path, help="the model file, for classes and layers it defines")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--info", default="{}", help="JSON answered by GET /version (name, version, alias, ...)"
    )
    proxy = commands.add_parser(
        "proxy", help="the stable endpoint: forward to the container in --upstream-file"
    )
    proxy.add_argument("--upstream-file", required=True, type=Path, help='{"host": ..., "port": ...}')
    proxy.add_argument("--host", default="127.0.0.1")
    proxy.add_argument("--port", type=int, required=True)
    for command in (serve, proxy):
        command.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024)
    serve.add_argument("--max-batch", type=int, default=256)

    tests = commands.add_parser("model-tests", help="run a repository's model tests on the trained model")
    tests.add_argument("--model-dir", required=True, type=Path, help="the attempt's model/ directory")
    tests.add_argument("--tests", required=True, type=Path, help="the repository's model_tests.py")
    tests.add_argument("--data", required=True, type=Path, help="the held-out split")
    tests.add_argument("--out", required=True, type=Path, help="where model_tests.json is written")
    tests.add_argument("--model", type=Path, help="the model file, for classes and layers it defines")
    return parser


def _model_tests(args: argparse.Namespace) -> int:
    from pushtrain.runner.data import DataError
    from pushtrain.runner.model_tests import run_model_tests
    from pushtrain.runner.usercode import ContractError, UserCodeError

    try:
        document = run_model_tests(args.model_dir, args.tests, args.data, args.out, args.model)
    except UserCodeError as exc:
        return _fail(args.out, exc.category, str(exc), exc.fix)
    except (ContractError, OSError, KeyError, ValueError) as exc:
        return _fail(args.out, "contract", f"cannot load the model for its tests: {exc!r}")
    except DataError as exc:
        return _fail(args.out, "data", str(exc))
    failed = [t["name"] for t in document["tests"] if not t["passed"]]
    print(
        f"[pushtrain] model tests: {len(document['tests']) - len(failed)} passed, {len(failed)} failed"
        f"{': ' + ', '.join(failed) if failed else ''}",
        flush=True,
    )
    return contract.EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from pushtrain.runner import serve

    if args.command == "proxy":
        serve.proxy(args.upstream_file, host=args.host, port=args.port, max_body_bytes=args.max_body_bytes)
        return contract.EXIT_OK
    try:
        serve.serve(
            args.model_dir,
            port=args.port,
            info=json.loads(args.info),
            model_file=args.model,
            max_batch=args.max_batch,
            max_body_bytes=args.max_body_bytes,
        )
    except (OSError, ValueError, KeyError) as exc:
        print(f"[pushtrain] ERROR: cannot serve {args.model_dir}: {exc!r}", file=sys.stderr, flush=True)
        return contract.FAILURE_CATEGORIES["usage"]
    return contract.EXIT_OK


def _fail(out_dir: Path | None, category: str, message: str, fix: str = "") -> int:
    """Say what failed (what to do first), leave error.json, and return the category's exit code."""
    exit_code = contract.FAILURE_CATEGORIES[category]
    reason = contract.EXIT_CODE_MEANINGS[exit_code]
    if fix:
        print(f"[pushtrain] what to do: {fix}", file=sys.stderr, flush=True)
    print(f"[pushtrain] ERROR ({reason}): {message}", file=sys.stderr, flush=True)
    if out_dir is not None and out_dir.is_dir() and os.access(out_dir, os.W_OK):
        contract.write_json_atomic(
            out_dir / contract.ERROR_FILE,
            {
                "exit_code": exit_code,
                "category": category,
                "healable": contract.healable(exit_code),
                "reason": reason,
                "message": message,
                "fix": fix,
            },
        )
    return exit_code


def _train(args: argparse.Namespace) -> int:
    from pushtrain.runner.data import DataError, load_data
    from pushtrain.runner.train import (
        Attempt,
        Progress,
        Terminated,
        TerminationGuard,
        trainer_for,
    )
    from pushtrain.runner.usercode import ContractError, UserCodeError, load_model_file

    guard = TerminationGuard()
    guard.install()
    out_dir = args.out
    if not out_dir.is_dir() or not os.access(out_dir, os.W_OK):
        return _fail(None, "usage", f"output directory {out_dir} is missing or not writable")
    (out_dir / contract.ERROR_FILE).unlink(missing_ok=True)
    try:
        overrides = json.loads(args.hparams)
        if not isinstance(overrides, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        return _fail(out_dir, "usage", f"--hparams must be a JSON object: {exc}")

    try:
        model = load_model_file(args.model)
        kind = args.kind or model.kind_of_builder()
        data = load_data(args.data)
        attempt = Attempt(
            kind=kind,
            model=model,
            hparams={**model.hparams, **overrides},
            data=data,
            out_dir=out_dir,
            run_key=args.run_key,
            progress=Progress(out_dir / contract.PROGRESS_FILE),
            guard=guard,
            checkpoints=not args.no_checkpoints,
            warm_start=args.warm_start,
        )
        metrics = trainer_for(kind)(attempt)
    except Terminated:
        return _fail(
            out_dir,
            "terminated",
            "SIGTERM before training completed; "
            "the last completed epoch is checkpointed and a restart resumes from it",
        )
    except UserCodeError as exc:
        return _fail(out_dir, exc.category, str(exc), exc.fix)
    except ContractError as exc:
        return _fail(out_dir, "contract", str(exc))
    except DataError as exc:
        return _fail(out_dir, "data", str(exc))
    print(
        f"[pushtrain] done: accuracy={metrics['accuracy']:.4f} ({metrics['evaluated_on']}) "
        f"epochs={metrics['epochs_run']} train_seconds={metrics['train_seconds']:.1f}",
        flush=True,
    )
    return contract.EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    from pushtrain.runner.data import DataError
    from pushtrain.runner.evaluate import write_predictions
    from pushtrain.runner.usercode import ContractError, UserCodeError

    if not args.out.is_dir() or not os.access(args.out, os.W_OK):
        return _fail(None, "usage", f"output directory {args.out} is missing or not writable")
    try:
        result = write_predictions(args.model_dir, args.data, args.out, args.model)
    except UserCodeError as exc:
        return _fail(args.out, exc.category, str(exc), exc.fix)
    except ContractError as exc:
        return _fail(args.out, "contract", str(exc))
    except DataError as exc:
        return _fail(args.out, "data", str(exc))
    print(
        f"[pushtrain] {contract.PREDICTIONS_FILE}: {result['n_predicted']} held-out images predicted"
        f"{' with probabilities' if result['probabilities'] else ''}; the platform scores them",
        flush=True,
    )
    return contract.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("serve", "proxy"):
            return _serve(args)
        if args.command == "model-tests":
            return _model_tests(args)
        return _train(args) if args.command == "train" else _predict(args)
    except Exception:
        # A bug of ours: keep the traceback, it is what a platform engineer needs.
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
