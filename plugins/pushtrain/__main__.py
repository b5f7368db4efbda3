"""The ``pushtrain`` command for data scientists and platform engineers.

Run with ``plugins/`` on ``PYTHONPATH`` (as Airflow has it)::

    PYTHONPATH=plugins python -m pushtrain train --model model.py --data data/datasets/digits/v1/train --out /tmp/a1
    PYTHONPATH=plugins python -m pushtrain detect model.py
    PYTHONPATH=plugins python -m pushtrain check model.py   # does it meet the contract? (parsed, never run)
    PYTHONPATH=plugins python -m pushtrain adapt train.py -o model.py   # rewrite a plain training script
    PYTHONPATH=plugins python -m pushtrain images          # build the training images (cached)
    PYTHONPATH=plugins python -m pushtrain datasets        # export the offline data sets (cached)
    PYTHONPATH=plugins python -m pushtrain datasets add pets /data/pets.zip --image-size 64 64
    PYTHONPATH=plugins python -m pushtrain datasets list
    PYTHONPATH=plugins python -m pushtrain registry list [NAME]    # models, versions and their aliases
    PYTHONPATH=plugins python -m pushtrain registry show models:/digits@champion   # or NAME/VERSION
    PYTHONPATH=plugins python -m pushtrain registry promote NAME VERSION --reason "..."
    PYTHONPATH=plugins python -m pushtrain registry rollback NAME [--to VERSION]
    PYTHONPATH=plugins python -m pushtrain registry history NAME   # every alias move: when, from, to, why, who
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pushtrain.kinds import KINDS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pushtrain", description="pushtrain command line")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run one training attempt locally, in the sandboxed image")
    train.add_argument("--model", required=True, type=Path, help="model file (HPARAMS + builder)")
    train.add_argument("--data", required=True, type=Path, help="image folder: <data>/<label>/*.png")
    train.add_argument("--out", required=True, type=Path, help="output directory of this attempt")
    train.add_argument("--hparams", default="{}", help="JSON overrides of HPARAMS, e.g. '{\"epochs\": 5}'")
    train.add_argument("--kind", choices=KINDS, help="model kind (default: detected)")
    train.add_argument("--memory", help="memory cap, Docker syntax (default PUSHTRAIN_CONTAINER_MEMORY)")
    train.add_argument("--cpus", type=float, help="CPU cap in cores (default PUSHTRAIN_CONTAINER_CPUS)")
    train.add_argument("--name", help="container name (default derived from the output directory)")

    detect = commands.add_parser("detect", help="print the model kind of a file (parsed, never run)")
    detect.add_argument("path", type=Path)

    # Listed for --help only: main() hands check and adapt their arguments before this parser runs.
    for name, summary in (
        ("check", "check a model file against the contract (parsed, never run)"),
        ("adapt", "rewrite a plain Keras or scikit-learn training script to the contract"),
    ):
        command = commands.add_parser(name, help=summary, add_help=False)
        command.add_argument("arguments", nargs=argparse.REMAINDER)

    images = commands.add_parser("images", help="build the training images that are not built yet")
    images.add_argument("names", nargs="*", help="tensorflow, sklearn (default: all)")
    images.add_argument("--print-tags", action="store_true", help="print the tags of the current source")

    datasets = commands.add_parser("datasets", help="data sets: export the bundled ones, add your own, list")
    actions = datasets.add_subparsers(dest="action")
    export = actions.add_parser("export", help="export the bundled data sets (the default action)")
    export.add_argument("names", nargs="*", help="digits, mnist5k (default: all)")
    add = actions.add_parser("add", help="import a folder, .zip/.tar.gz or .csv as NAME's next version")
    add.add_argument("name", help="data set name: letters, digits, '.', '_', '-'")
    add.add_argument("path", type=Path, help="<path>/<label>/<image>, or a CSV with a label column")
    add.add_argument("--test-fraction", type=float, default=0.2, help="held out per class (default 0.2)")
    add.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        help="resize every image to this (default: the most common size)",
    )
    add.add_argument("--channels", type=int, choices=(1, 3), help="1 grey, 3 colour (default: most common)")
    add.add_argument("--label-column", help="the CSV column holding the classes (default: label)")
    add.add_argument("--categorical", default="", help="CSV columns to one-hot encode, comma-separated")
    listing = actions.add_parser("list", help="names, versions, counts, classes, sizes and hashes")
    listing.add_argument("names", nargs="*", help="only these data sets")
    listing.add_argument("--json", action="store_true", help="the manifests as JSON")

    registry = commands.add_parser("registry", help="model versions, aliases (champion, challenger), history")
    registry_actions = registry.add_subparsers(dest="action", required=True)
    registry_list = registry_actions.add_parser("list", help="models and aliases; with NAME its versions")
    registry_list.add_argument("name", nargs="?")
    show = registry_actions.add_parser("show", help="one version: NAME/VERSION, NAME@ALIAS or models:/...")
    show.add_argument("reference")
    show.add_argument("--json", action="store_true", help="as JSON")
    promote = registry_actions.add_parser("promote", help="make VERSION the champion (a person's decision)")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    rollback = registry_actions.add_parser("rollback", help="move champion back to the previous one")
    rollback.add_argument("name")
    rollback.add_argument("--to", type=int, help="this version instead of the previous champion")
    for action in (promote, rollback):
        action.add_argument("--reason", default="", help="why, kept in the alias history")
        action.add_argument("--by", help="who decided (default: the current user)")
    for action in (promote, rollback, add):
        action.add_argument(
            "--no-announce",
            dest="announce",
            action="store_false",
            help="do not tell Airflow (PUSHTRAIN_AIRFLOW_URL): no deploy, no retrain follows",
        )
    history = registry_actions.add_parser("history", help="every alias move of NAME, oldest first")
    history.add_argument("name")
    history.add_argument("--json", action="store_true", help="as JSON")
    return parser


def _registry(args: argparse.Namespace) -> int:
    from pushtrain import settings
    from pushtrain.registry import CHAMPION, ModelRegistry, RegistryError

    registry = ModelRegistry(settings.registry_dir())
    by = f"user:{args.by}" if getattr(args, "by", None) else None
    try:
        if args.action == "list":
            for name in [args.name] if args.name else registry.model_names():
                aliases = registry.aliases(name)
                named = ", ".join(
                    f"v{number} {alias}"
                    for alias, number in sorted(aliases.items(), key=lambda item: item[1])
                )
                print(f"{name}  {named or 'no aliases'}")
                if args.name:
                    for version in registry.versions(name):
                        marks = [alias for alias, number in aliases.items() if number == version.number]
                        print(
                            f"  {version.label}  {version.metric} {version.metric_value:.4f}  "
                            f"{version.created_at:%Y-%m-%d %H:%M}  {version.pipeline_run_id}  "
                            f"{' '.join(sorted(marks))}".rstrip()
                        )
        elif args.action == "show":
            version = registry.resolve(args.reference)
            record = {
                "name": version.model_name,
                "version": version.number,
                "uri": version.uri,
                "aliases": sorted(
                    a for a, n in registry.aliases(version.model_name).items() if n == version.number
                ),
                "metric": {version.metric: version.metric_value},
                "metrics": version.metrics,
                "tags": registry.tags(version.model_name, version.number),
                "created_at": version.created_at.isoformat(),
                "pipeline_run_id": version.pipeline_run_id,
                "path": str(version.path),
                "lineage": version.lineage,
            }
            if args.json:
                print(json.dumps(record, indent=2))
            else:
                for key, value in record.items():
                    print(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")
        elif args.action == "promote":
            move = registry.set_alias(
                args.name, CHAMPION, args.version, by=by, reason=args.reason or "promoted by hand"
            )
            print(f"{args.name}: champion is v{args.version}" + ("" if move else " already"))
            if move and args.announce:
                return _announce_champion(args.name, args.version)
        elif args.action == "rollback":
            move = registry.rollback(args.name, args.to, reason=args.reason, by=by)
            print(f"{args.name}: {move.reason}")
            if args.announce:
                return _announce_champion(args.name, move.to_version)
        else:
            moves = registry.history(args.name)
            if args.json:
                print(json.dumps([move.to_json() for move in moves], indent=2))
            for move in [] if args.json else moves:
                was = "-" if move.from_version is None else f"v{move.from_version}"
                now = "-" if move.to_version is None else f"v{move.to_version}"
                print(f"{move.at}  {move.alias}  {was} -> {now}  {move.by}  {move.reason}")
    except (RegistryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pushtrain import datasets

    if args.action == "add":
        options = datasets.ImportOptions(
            test_fraction=args.test_fraction,
            image_size=tuple(args.image_size) if args.image_size else None,
            channels=args.channels,
            label_column=args.label_column,
            categorical=tuple(c.strip() for c in args.categorical.split(",") if c.strip()),
        )
        try:
            result = datasets.add_path(args.name, args.path, options)
        except datasets.DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if result.created and args.announce:
            return _announce_dataset(result.manifest)
        return 0
    if args.action == "list":
        manifests = [m for m in datasets.list_datasets() if not args.names or m.name in args.names]
        print(
            json.dumps([asdict(m) for m in manifests], indent=2)
            if args.json
            else "\n".join(datasets.listing(manifests))
        )
        return 0
    for name in getattr(args, "names", None) or datasets.DATASET_NAMES:
        manifest = datasets.ensure_dataset(name)
        print(
            f"{name}: {manifest.root} ({manifest.counts['train']} train / {manifest.counts['test']} test, "
            f"sha256 {manifest.dataset_sha256[:12]})"
        )
    return 0


def _announce(what: str, asset_uri: str, extra: dict, fallback_dag_id: str, fallback_conf: dict) -> int:
    """Tell Airflow of a change made here, so the DAGs that follow it run; say so, or say how to do it."""
    from pushtrain import airflow_api

    try:
        print(airflow_api.announce(asset_uri, extra, fallback_dag_id, fallback_conf))
    except airflow_api.AirflowApiError as exc:
        print(
            f"warning: {what} is done, but Airflow was not told ({exc}). Trigger {fallback_dag_id} with "
            f"{json.dumps(fallback_conf)} from the web UI or `airflow dags trigger`, or rerun with "
            "--no-announce to silence this",
            file=sys.stderr,
        )
    return 0


def _announce_champion(model_name: str, version: int) -> int:
    from pushtrain.model_assets import champion_event_extra, model_asset

    return _announce(
        f"the champion move of {model_name}",
        model_asset(model_name).uri,
        champion_event_extra(model_name, version),
        "deploy_model",
        {"model_name": model_name},
    )


def _announce_dataset(manifest) -> int:
    from pushtrain.dataset_assets import dataset_asset

    return _announce(
        f"{manifest.name} v{manifest.version}",
        dataset_asset(manifest.name).uri,
        manifest.asset_extra(),
        "retrain_on_new_data",
        {"dataset": manifest.name, "version": manifest.version},
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check"] or argv[:1] == ["adapt"]:
        # Their own parsers take every option, --help included.
        from pushtrain import adapt, contract_check

        return (contract_check if argv[0] == "check" else adapt).main(argv[1:])
    if (
        argv[:1] == ["datasets"]
        and len(argv) > 1
        and argv[1] not in ("export", "add", "list")
        and not argv[1].startswith("-")
    ):
        argv.insert(1, "export")  # `datasets digits`, as before there were actions
    args = _parser().parse_args(argv)
    if args.command == "detect":
        from pushtrain import detect

        return detect.main([str(args.path)])
    if args.command == "images":
        from pushtrain import images

        names = tuple(args.names) or images.IMAGE_NAMES
        if args.print_tags:
            for name in names:
                print(images.image_reference(name))
            return 0
        try:
            images.ensure_all_images(names)
        except images.ImageBuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "datasets":
        return _datasets(args)
    if args.command == "registry":
        return _registry(args)
    from pushtrain import localrun

    try:
        result = localrun.train(
            model=args.model,
            data=args.data,
            out=args.out,
            hparams=json.loads(args.hparams),
            kind=args.kind,
            memory=args.memory,
            cpus=args.cpus,
            name=args.name,
        )
    except localrun.LocalRunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.summary(), indent=2))
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
