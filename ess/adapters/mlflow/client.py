"""How ess reaches an MLflow store: its URI, the names it logs under, retries, reachability.

MLflow itself is imported only by the functions that talk to a store, never at module import, so
the analysis package can read these names without loading MLflow.
"""

from __future__ import annotations

import functools
import numbers
import os
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ess.errors import ConfigError
from ess.extras import require

T = TypeVar("T")

TRACKING_ENV = "MLFLOW_TRACKING_URI"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
DEFAULT_STORAGE = "runs/tune"
#: tags every trial run carries (when the config has the field), so runs can be filtered side by side
CONFIG_TAGS = ("mode", "seed", "dataset", "steps", "n_inter", "m", "genotype", "cell", "arm")
ROLE_TAG, NAME_TAG, TRIAL_TAG, PHASE_TAG = "ess.role", "ess.experiment", "ess.trial_id", "ess.phase"
PARENT_TAG = "mlflow.parentRunId"
NO_TRACKING = ("none", "off", "false", "no", "0")

RETRY_ENV = "ESS_TRACKING_RETRY_S"
DEFAULT_RETRY_S = 15.0
PROBE_TIMEOUT_S = 3.0
#: what ess sets for its own HTTP calls when the user has not: MLflow's defaults (7 retries,
#: backoff factor 2, 120 s timeout) make one call to a dead server hang for minutes; and no "View run"
#: line on stdout for every run closed
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}

_UNREACHABLE_TEXT = ("max retries exceeded", "connection refused", "connection reset", "connection aborted",
                     "timed out", "timeout exception", "temporarily unavailable", "service unavailable",
                     "bad gateway", "gateway time", "name or service not known", "failed to establish",
                     "remote end closed", "remotedisconnected", "database is locked", "database is busy",
                     "unable to open database", "disk i/o error", "no route to host", "network is unreachable")


# --------------------------------------------------------------------------------------------------
# URIs


def default_tracking_uri(storage_path: str | os.PathLike = DEFAULT_STORAGE) -> str:
    """``sqlite:///<storage_path>/mlflow.db`` (absolute), the store used when none is configured."""
    return f"sqlite:///{Path(storage_path).expanduser().resolve() / DB_NAME}"


def resolve_tracking_uri(uri: str | None, storage_path: str | os.PathLike = DEFAULT_STORAGE) -> str | None:
    """The flag, else ``$MLFLOW_TRACKING_URI``, else a SQLite file under ``storage_path``; ``none``: off.

    A relative ``sqlite:///file.db`` is made absolute, because Ray runs trials in their own working
    directories and a relative path would name a different file in each.
    """
    uri = (uri or "").strip() or os.environ.get(TRACKING_ENV, "").strip()
    if uri.lower() in NO_TRACKING:
        return None
    if not uri:
        if "://" in str(storage_path):
            raise ConfigError(f"tracking_uri: storage {storage_path} is not a local path; give --tracking-uri "
                              "(an MLflow server, e.g. http://HEAD_IP:5000)")
        return default_tracking_uri(storage_path)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).expanduser().resolve()}"
    if "://" not in uri and ":" not in uri[:3]:  # a plain directory: MLflow's file store, made absolute
        return str(Path(uri).expanduser().resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def is_http(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith(("http://", "https://"))


def local_artifact_root(uri: str, experiment: str) -> str | None:
    """Artifact location for a new experiment in a local store: ``<db dir>/mlartifacts/<experiment>``.

    Absolute, so that trials (which run in other working directories) and ``mlflow ui`` agree.
    Servers (``http://``) choose their own location: None.
    """
    db = sqlite_path(uri)
    if db is None:
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return str(db.parent / ARTIFACTS_DIR / safe)


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line that serves ``uri`` (bound to 127.0.0.1 unless asked)."""
    return ["mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]


def runs_path(experiment_id: str | None) -> str:
    """The MLflow UI's runs view of an experiment (MLflow 3 opens GenAI experiments on their traces)."""
    return f"/#/experiments/{experiment_id}/runs" if experiment_id else ""


def ui_hint(uri: str | None, experiment_id: str | None = None) -> str:
    """One line telling the user how to look at the runs (of ``experiment_id``: the direct address of its runs)."""
    if uri is None:
        return "tracking is off"
    if is_http(uri):
        return f"MLflow UI: {uri.rstrip('/')}{runs_path(experiment_id)}"
    return ("MLflow UI: " + shlex.join(ui_command(uri)) + f"  (then open http://127.0.0.1:5000{runs_path(experiment_id)})")


# --------------------------------------------------------------------------------------------------
# What is logged: params, tags, metrics


@functools.lru_cache(maxsize=8)
def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout holding ``path`` (this package by default), ``+dirty`` if modified."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit or None


def commit_tags(tags: dict[str, str]) -> dict[str, str]:
    """``tags`` plus the git commit of this checkout (``git_commit``, ``mlflow.source.git.commit``)."""
    commit = git_commit()
    if commit:
        tags.setdefault("git_commit", commit)
        tags.setdefault("mlflow.source.git.commit", commit.split("+")[0])
    return tags


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a flat row (bools as 0/1); strings, None, lists are left out."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, numbers.Real):
            out[key] = float(value)
    return out


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A resolved config as MLflow params: nested keys joined with ``.``, values as strings."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(str(v) for v in value)
        else:
            out[name] = "" if value is None else str(value)
    return out


def config_tags(config: Mapping[str, Any]) -> dict[str, str]:
    """Tags for filtering: mode, seed, dataset, node counts (and genotype/cell for retraining)."""
    return {key: str(config[key]) for key in CONFIG_TAGS if key in config and config[key] is not None}


# --------------------------------------------------------------------------------------------------
# Reaching the store


def connect(uri: str):
    require("mlflow", "MLflow tracking")
    from mlflow import MlflowClient  # the mlflow extra: this package is imported without it too

    return MlflowClient(uri)


def retry(fn: Callable[[], T], what: str, attempts: int = 6) -> T:
    """Call ``fn``, retrying on a locked SQLite database or a dropped database connection (several writers).

    HTTP errors are not retried here: MLflow's client already retried them (``MLFLOW_HTTP_REQUEST_*``),
    and retrying again would stall training for minutes when the server is down.
    """
    delay = 0.2
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:  # MLflow wraps sqlite/HTTP errors in several types
            text = str(err).lower()
            transient = any(s in text for s in ("locked", "busy", "timed out", "connection", "temporarily"))
            if not transient or "api request to" in text or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def set_http_defaults(uri: str | None) -> None:
    """Short MLflow HTTP retries and timeout for this process, unless the user set them."""
    if is_http(uri):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)


def retry_interval() -> float:
    """Seconds between two reachability checks while a store is down (``$ESS_TRACKING_RETRY_S``)."""
    try:
        return max(0.0, float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_S)))
    except ValueError:
        return DEFAULT_RETRY_S


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen or len(seen) > 20:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def _http_status(err: BaseException) -> int:
    try:
        return int(err.get_http_status_code())  # type: ignore[attr-defined]
    except Exception:
        return 500


def is_unreachable(err: BaseException) -> bool:
    """True when ``err`` says the store could not be reached (not that it refused the record)."""
    try:
        import requests  # comes with the mlflow extra

        request_errors: tuple[type, ...] = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                                            requests.exceptions.RetryError)
    except ImportError:  # pragma: no cover - requests comes with mlflow
        request_errors = ()
    chain = list(_chain(err))
    for e in chain:   # the server answered and refused the request (4xx): not an outage, whatever it says
        if type(e).__name__ == "RestException" and _http_status(e) < 500:
            return False
    for e in chain:
        if isinstance(e, (ConnectionError, TimeoutError, socket.timeout, *request_errors)):
            return True
    text = " ".join(str(e).lower() for e in chain)
    return any(s in text for s in _UNREACHABLE_TEXT)


def short_reason(err: BaseException | str | None) -> str:
    """A few words for the one-line message: 'connection refused', 'timed out' or the error's start."""
    if err is None:
        return "unreachable"
    if isinstance(err, str):
        return err
    text = " ".join(str(e).lower() for e in _chain(err))
    for words in ("connection refused", "timed out", "connection reset", "name or service not known",
                  "database is locked", "service unavailable", "bad gateway"):
        if words in text:
            return words
    first = (str(err).splitlines() or [type(err).__name__])[0]
    return first[:120]


def probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A cheap reachability check: ``GET <uri>/health`` for a server (no retries); True otherwise.

    Any answer below 500 counts as reachable (a proxy may not route /health): the upload decides.
    """
    if not is_http(uri):
        return True
    import requests  # comes with the mlflow extra

    insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1")
    verify: bool | str = False if insecure else (os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True)
    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=(timeout, timeout), verify=verify)
    except requests.exceptions.SSLError:   # something answers; MLflow's own client may know better
        return True
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout):
        return False
    except Exception:
        return True
    return response.status_code < 500


# --------------------------------------------------------------------------------------------------
# Experiments and runs by tag


#: MLflow 3 opens an experiment on the page of its kind: model training (runs), not GenAI (traces)
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def experiment_id_of(uri: str | None, name: str) -> str | None:
    """The id of MLflow experiment ``name``, or None (tracking off, store unreachable, no such experiment)."""
    if not uri:
        return None
    try:
        experiment = connect(uri).get_experiment_by_name(name)
    except Exception:  # noqa: BLE001 - a hint, never an error
        return None
    return experiment.experiment_id if experiment is not None else None


def get_or_create_experiment(uri: str, name: str) -> str:
    """The id of MLflow experiment ``name`` (created, with a local artifact root, when missing)."""
    mlflow_client = connect(uri)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    experiment = retry(lambda: mlflow_client.get_experiment_by_name(name), "get_experiment")
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            retry(lambda: mlflow_client.restore_experiment(experiment.experiment_id), "restore_experiment")
        if KIND_TAG not in experiment.tags:
            retry(lambda: mlflow_client.set_experiment_tag(experiment.experiment_id, KIND_TAG, KIND), "set_tag")
        return experiment.experiment_id
    try:
        return retry(lambda: mlflow_client.create_experiment(name, artifact_location=local_artifact_root(uri, name),
                                                             tags={KIND_TAG: KIND}), "create_experiment")
    except Exception:
        experiment = mlflow_client.get_experiment_by_name(name)  # created concurrently by another process
        if experiment is None:
            raise
        return experiment.experiment_id


def find_runs(uri: str, experiment_id: str, tags: Mapping[str, str], *, order_by: list[str] | None = None,
              max_results: int = 1000) -> list[Any]:
    """Runs of an experiment whose tags equal ``tags``."""
    def quote(value: str) -> str:
        return "'" + str(value).replace("'", "\\'") + "'"

    filt = " and ".join(f"tags.`{k}` = {quote(v)}" for k, v in tags.items())
    mlflow_client = connect(uri)
    return retry(lambda: mlflow_client.search_runs([experiment_id], filter_string=filt, order_by=order_by,
                                                   max_results=max_results), "search_runs")


def restarts(mlflow_client: Any, run_id: str) -> int:
    """The run's ``ess.restarts`` tag (0 when absent); an unreachable store raises."""
    try:
        return int(mlflow_client.get_run(run_id).data.tags.get("ess.restarts", "0"))
    except Exception as err:
        if is_unreachable(err):
            raise
        return 0


__all__ = [
    "CONFIG_TAGS", "DEFAULT_STORAGE", "HTTP_DEFAULTS", "NAME_TAG", "PARENT_TAG", "PHASE_TAG", "RETRY_ENV",
    "ROLE_TAG", "TRIAL_TAG", "commit_tags", "config_tags", "connect", "default_tracking_uri", "find_runs",
    "flat_params", "get_or_create_experiment", "git_commit", "is_http", "is_unreachable", "local_artifact_root",
    "numeric_metrics", "probe", "resolve_tracking_uri", "restarts", "retry", "retry_interval",
    "set_http_defaults", "short_reason", "sqlite_path", "ui_command", "ui_hint",
]
