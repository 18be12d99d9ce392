"""The ``python -m ess.adapters.mlflow`` command: open the UI, list runs, upload what a spool kept."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from ess.adapters.mlflow.client import (
    DEFAULT_STORAGE,
    PHASE_TAG,
    ROLE_TAG,
    connect,
    is_http,
    resolve_tracking_uri,
    sqlite_path,
    ui_command,
)
from ess.adapters.mlflow.spool import sync
from ess.cli import run_main
from ess.errors import ConfigError


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ess.adapters.mlflow", description="MLflow helpers for ess runs")
    sub = parser.add_subparsers(dest="command", required=True)
    ui = sub.add_parser("ui", help="print and run the `mlflow ui` command for a tracking store")
    ui.add_argument("--tracking-uri", default="", help="else $MLFLOW_TRACKING_URI, else STORAGE/mlflow.db")
    ui.add_argument("--storage-path", default=DEFAULT_STORAGE, help="where the jobs keep mlflow.db")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--print", dest="print_only", action="store_true", help="print the command, do not run it")
    runs = sub.add_parser("runs", help="list the runs of an experiment with their main metric")
    runs.add_argument("experiment")
    runs.add_argument("--tracking-uri", default="")
    runs.add_argument("--storage-path", default=DEFAULT_STORAGE)
    runs.add_argument("--metric", default="valid/ppl")
    upload = sub.add_parser("sync", help="upload what runs spooled while the MLflow server was unreachable")
    upload.add_argument("--spool", default="", help="spool directory (else $ESS_TRACKING_SPOOL, else "
                                                    "~/.local/state/ess/mlflow-spool)")
    upload.add_argument("--tracking-uri", default="",
                        help="upload there instead of the store each run was logging to")
    return parser.parse_args(argv)


@run_main
def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.command == "sync":
        override = resolve_tracking_uri(args.tracking_uri, DEFAULT_STORAGE) if args.tracking_uri else None
        left = sync(args.spool or None, override)
        if left:
            print(f"error: {left} spool file(s) could not be uploaded yet; run this again later", file=sys.stderr)
        return 1 if left else 0
    uri = resolve_tracking_uri(args.tracking_uri, args.storage_path)
    if uri is None:
        raise ConfigError("tracking_uri: tracking is off (MLFLOW_TRACKING_URI=none)")
    if args.command == "ui":
        if is_http(uri):
            print(f"the store is an MLflow server: open {uri}")
            return 0
        db = sqlite_path(uri)
        if db is not None and not db.exists():
            raise ConfigError(f"{db}: no MLflow database yet (run a job first, or pass --tracking-uri)")
        command = ui_command(uri, args.host, args.port)
        print(shlex.join(command), flush=True)
        if args.print_only:
            return 0
        os.execvp(command[0], command)
    exp = connect(uri).get_experiment_by_name(args.experiment)
    if exp is None:
        raise ConfigError(f"experiment: no MLflow experiment {args.experiment!r} in {uri}")
    for run in connect(uri).search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        tags = run.data.tags
        print(json.dumps({"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
                          "role": tags.get(ROLE_TAG, "trial"), "phase": tags.get(PHASE_TAG),
                          "mode": tags.get("mode"), "seed": tags.get("seed"),
                          args.metric: run.data.metrics.get(args.metric)}))
    return 0


__all__ = ["main"]
