"""`python -m registry`: list, show, promote, roll back and export the registered model set,
and run a canary release on a running service."""
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
from registry.admin_client import AdminClient
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
    if args.url:  # through the service: a canary that runs is aborted first
        print(f"rolled back {CHAMPION!r} to {AdminClient(args.url).rollback()}")
        return
    before = _champion_or_none(registry)
    restored = registry.rollback()
    print(f"rolled back {CHAMPION!r} to the previous champion:")
    print(_set_table(registry, restored, before=before))


def _canary(registry: Registry, args: argparse.Namespace) -> None:
    admin = AdminClient(args.url)
    guards = {name: value for name, value in (
        ("min_requests", args.min_requests), ("min_impressions", args.min_impressions),
        ("min_stage_seconds", args.min_stage_seconds),
        ("warmup_seconds", args.warmup_seconds)) if value is not None}
    stages = [float(s) for s in args.stages.split(",")] if args.stages else None
    status = admin.canary(args.action, stages=stages, guards=guards or None, verdicts=1)
    print(describe_canary(status))
    if args.watch and status["canary"] is not None:
        shown = [describe_canary(status)]

        def show(update: dict[str, object]) -> None:
            line = describe_canary(update)
            if line != shown[-1]:
                print(line, flush=True)
                shown.append(line)
        admin.watch(timeout_s=args.watch, on_status=show)


def describe_canary(status: dict[str, object]) -> str:
    canary = status.get("canary")
    if not isinstance(canary, dict):
        return "no canary"
    line = (f"canary {canary['id']}: {canary['status']} at stage {canary['stage']} "
            f"({float(canary['share']):.0%} of users)")
    return line + (f": {canary['reason']}" if canary.get("reason") else "")


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
    rollback = commands.add_parser("rollback", help="swap champion and previous_champion")
    rollback.add_argument("--url", help="through this service's admin endpoint (aborts a "
                          "running canary too); RECSYS_ADMIN_TOKEN holds the token")
    rollback.set_defaults(run=_rollback)
    canary = commands.add_parser("canary", help="start, watch or steer a canary of the "
                                 "challenger on a running service (RECSYS_ADMIN_TOKEN)")
    canary.add_argument("action", choices=("start", "status", "pause", "resume", "abort",
                                           "promote"))
    canary.add_argument("--url", default="http://127.0.0.1:3000")
    canary.add_argument("--stages", help="start: shares of users, e.g. 0.01,0.05,0.2,0.5,1")
    canary.add_argument("--min-requests", type=int, help="start: per variant and stage")
    canary.add_argument("--min-impressions", type=int, help="start: per variant and stage")
    canary.add_argument("--min-stage-seconds", type=float, help="start: per stage")
    canary.add_argument("--warmup-seconds", type=float,
                        help="start: latency is timed after each stage's first seconds (10)")
    canary.add_argument("--watch", type=float, metavar="SECONDS", default=0,
                        help="print each change until the canary ends or this many seconds")
    canary.set_defaults(run=_canary)
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
