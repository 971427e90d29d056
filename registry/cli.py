"""`python -m registry`: list, show, promote, roll back and export the registered model set."""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from recsys.errors import RecsysError
from recsys.models.registry_client import (
    CHALLENGER,
    CHAMPION,
    TAG_EMBEDDING_VERSION,
    TAG_FINGERPRINT,
)
from registry.bento_export import export_to_bentoml
from registry.model_registry import Registry
from registry.registration import (
    ModelSet,
    default_tracking_uri,
)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces, with a rule under the header."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _list(registry: Registry, args: argparse.Namespace) -> None:
    rows = []
    for name in registry.names.by_kind().values():
        for info in registry.list_versions(name):
            rows.append([name, info.version, ",".join(info.aliases) or "-",
                         info.created.strftime("%Y-%m-%d %H:%M:%S"),
                         info.tags.get(TAG_EMBEDDING_VERSION, "-"),
                         info.tags.get(TAG_FINGERPRINT, "-"), (info.run_id or "-")[:12]])
    if not rows:
        print(f"no registered versions in {registry.tracking_uri}")
        return
    print(format_table(["MODEL", "VERSION", "ALIASES", "CREATED (UTC)", "EMBEDDING", "FINGERPRINT",
                        "RUN"], rows))


def _set_table(registry: Registry, model_set: ModelSet, *, before: ModelSet | None = None) -> str:
    was = [version for _, _, version in before.items()] if before else []
    rows = []
    for i, (kind, name, version) in enumerate(model_set.items()):
        tags = registry.version_metadata(name, version)
        rows.append([kind, name, version, tags.get(TAG_EMBEDDING_VERSION, "-"),
                     tags.get(TAG_FINGERPRINT, "-"), *was[i:i + 1]])
    headers = ["KIND", "MODEL", "VERSION", "EMBEDDING", "FINGERPRINT"]
    return format_table(headers + (["WAS"] if before else []), rows)


def _champion_or_none(registry: Registry) -> ModelSet | None:
    return registry.resolve(CHAMPION) if registry.champion_exists() else None


def _show(registry: Registry, args: argparse.Namespace) -> None:
    print(f"alias {args.alias!r}:")
    print(_set_table(registry, registry.resolve(args.alias)))


def _promote(registry: Registry, args: argparse.Namespace) -> None:
    before = _champion_or_none(registry)
    promoted = registry.promote(args.source)
    print(f"promoted {args.source!r} to {CHAMPION!r}:")
    print(_set_table(registry, promoted, before=before))


def _rollback(registry: Registry, args: argparse.Namespace) -> None:
    before = _champion_or_none(registry)
    restored = registry.rollback()
    print(f"rolled back {CHAMPION!r} to the previous champion:")
    print(_set_table(registry, restored, before=before))


def _export(registry: Registry, args: argparse.Namespace) -> None:
    aliases = args.alias or [CHAMPION]
    exported: dict[str, dict[str, str]] = {}
    for alias in aliases:
        if alias != CHAMPION and not registry.alias_exists(alias):
            print(f"no {alias!r} registered: skipped")
            continue
        exported[alias] = export_to_bentoml(registry, alias, home=args.bentoml_home)
        print(f"exported {alias!r} to the BentoML model store:")
        print(format_table(["KIND", "BENTOML TAG"], list(exported[alias].items())))
    if args.models_file is not None:
        args.models_file.write_text(json.dumps(exported, indent=2) + "\n")
        print(f"wrote {args.models_file} (the service reads it through RECSYS_MODELS_FILE)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m registry", description=__doc__)
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking/registry URI (default: $RECSYS_TRACKING_URI, "
                             "$MLFLOW_TRACKING_URI, else sqlite:///$RECSYS_STORE_DIR/mlruns.db "
                             "with RECSYS_STORE_DIR=mlstore)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every version of the three models, with aliases"
                        ).set_defaults(run=_list)
    show = commands.add_parser("show", help="the versions an alias points to")
    show.add_argument("--alias", required=True)
    show.set_defaults(run=_show)
    promote = commands.add_parser("promote", help="make an alias the champion (checks pairing)")
    promote.add_argument("--from", dest="source", default=CHALLENGER,
                         help=f"alias to promote (default {CHALLENGER})")
    promote.set_defaults(run=_promote)
    commands.add_parser("rollback", help="swap champion and previous_champion"
                        ).set_defaults(run=_rollback)
    export = commands.add_parser("export", help="copy an aliased set into the BentoML store")
    export.add_argument("--alias", action="append",
                        help=f"alias to export; repeat for several (default {CHAMPION})")
    export.add_argument("--models-file", type=Path, default=None,
                        help="write the exported tags per alias here for the service")
    export.add_argument("--bentoml-home", type=Path, default=None,
                        help="BentoML home to export into (default: $BENTOML_HOME or ~/bentoml)")
    export.set_defaults(run=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Same defaults as the training side (training/settings.py): RECSYS_TRACKING_URI, else the
    # sqlite store under RECSYS_STORE_DIR (default ./mlstore).
    tracking_uri = (args.tracking_uri or os.environ.get("RECSYS_TRACKING_URI")
                    or os.environ.get("MLFLOW_TRACKING_URI")
                    or default_tracking_uri(Path(os.environ.get("RECSYS_STORE_DIR", "mlstore"))))
    try:
        args.run(Registry(tracking_uri), args)
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
