"""The ``python -m ess.adapters.mlflow`` command: open the UI, list runs, sync a record, close a dead driver's runs."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from ess.adapters.mlflow.client import (
    DEFAULT_STORAGE,
    NAME_TAG,
    PHASE_TAG,
    ROLE_TAG,
    connect,
    experiment_id_of,
    is_http,
    resolve_tracking_uri,
    runs_path,
    sqlite_path,
    ui_command,
)
from ess.adapters.mlflow.runs import close_stale
from ess.adapters.mlflow.sync import experiment_of, sync_directory
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
    ui.add_argument("--experiment", default="", help="print the address of this experiment's runs view too "
                    "(the MLflow experiment, ess-<job>, or a job's name)")
    runs = sub.add_parser("runs", help="list the runs of an experiment with their main metric")
    runs.add_argument("experiment")
    runs.add_argument("--tracking-uri", default="")
    runs.add_argument("--storage-path", default=DEFAULT_STORAGE)
    runs.add_argument("--metric", default="valid/ppl")
    sync = sub.add_parser("sync", help="bring MLflow up to date with an experiment directory (or one trial's run "
                                       "directory): each metric point and file once, safe to repeat")
    sync.add_argument("directory", help="<storage>/<name> of a job (job.yaml), or a trial's run/checkpoint directory")
    sync.add_argument("--tracking-uri", default="", help="else the job's, else $MLFLOW_TRACKING_URI, else the "
                                                         "SQLite file next to the experiment")
    close = sub.add_parser("close", help="mark the RUNNING runs of an experiment whose driver is gone KILLED")
    close.add_argument("directory", help="<storage>/<name> of the job (job.yaml)")
    close.add_argument("--tracking-uri", default="")
    return parser.parse_args(argv)


@run_main
def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.command == "sync":
        if sync_directory(args.directory, args.tracking_uri or None):
            return 0
        print("error: MLflow is unreachable; nothing was lost (the record is the directory): run this again later",
              file=sys.stderr)
        return 1
    if args.command == "close":
        uri, experiment, name = experiment_of(Path(args.directory).expanduser().resolve(), args.tracking_uri or None)
        closed = close_stale(uri, experiment, name=name, force=True)
        print(f"{name}: " + ("its RUNNING runs are marked KILLED" if closed else "no RUNNING parent run"))
        return 0
    uri = resolve_tracking_uri(args.tracking_uri, args.storage_path)
    if uri is None:
        raise ConfigError("tracking_uri: tracking is off (MLFLOW_TRACKING_URI=none)")
    if args.command == "ui":
        experiment_id = _experiment_of(uri, args.experiment) if args.experiment else None
        if is_http(uri):
            print(f"the store is an MLflow server: open {uri.rstrip('/')}{runs_path(experiment_id)}")
            return 0
        db = sqlite_path(uri)
        if db is not None and not db.exists():
            raise ConfigError(f"{db}: no MLflow database yet (run a job first, or pass --tracking-uri)")
        command = ui_command(uri, args.host, args.port)
        print(shlex.join(command), flush=True)
        print(f"then open http://{args.host}:{args.port}{runs_path(experiment_id)}", flush=True)
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


def _experiment_of(uri: str, name: str) -> str:
    """The id of MLflow experiment ``name``, or of the experiment holding job ``name``'s parent run."""
    found = experiment_id_of(uri, name)
    if found is not None:
        return found
    try:
        client = connect(uri)
        experiments = client.search_experiments()
        parents = client.search_runs([e.experiment_id for e in experiments],
                                     filter_string=f"tags.`{NAME_TAG}` = '{name}'", max_results=1)
    except Exception as err:  # noqa: BLE001 - one line, whatever the store says
        raise ConfigError(f"experiment: cannot read {uri} ({str(err).splitlines()[0][:200]})") from None
    if parents:
        return parents[0].info.experiment_id
    known = ", ".join(e.name for e in experiments if e.name != "Default") or "none"
    raise ConfigError(f"experiment: no MLflow experiment or job {name!r} in {uri} (experiments: {known})")


__all__ = ["main"]
