"""Screenshots of the MLflow UI for a job's experiment, taken by headless Chromium.

    python tools/screenshots.py --storage-path runs --experiment ess-joint_search --out docs/screenshots

Starts ``mlflow ui`` on the store (127.0.0.1, a free port), waits until it answers, then saves
``runs.png`` (the experiment's runs view, as the job's footer links it) and ``genotype.png`` (the
genotype picture of the trial run with the lowest ``valid/ppl``, in the run's artifact view). Needs a
Chromium binary (Debian: ``apt-get install chromium``); not used by the tests.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ess.adapters.mlflow.client import connect, resolve_tracking_uri, runs_path  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(1.0)
    raise SystemExit(f"error: the MLflow UI at {url} did not answer within {seconds:.0f} s")


def shoot(browser: str, url: str, out: Path, size: str) -> None:
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", "--virtual-time-budget=30000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=300)
    print(f"{out}: {url}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="")
    parser.add_argument("--storage-path", default="", help="where the jobs keep mlflow.db")
    parser.add_argument("--experiment", required=True, help="the MLflow experiment (ess-<job>)")
    parser.add_argument("--out", default="docs/screenshots")
    parser.add_argument("--size", default="1600,1000", help="window width,height in pixels")
    args = parser.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("error: no Chromium found (Debian: apt-get install chromium)")
    uri = resolve_tracking_uri(args.tracking_uri, args.storage_path)
    client = connect(uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        known = ", ".join(e.name for e in client.search_experiments())
        raise SystemExit(f"error: experiment: no MLflow experiment {args.experiment!r} in {uri} (known: {known})")
    trials = [r for r in client.search_runs([experiment.experiment_id], order_by=["metrics.`valid/ppl` ASC"])
              if "genotype.png" in {a.path for a in client.list_artifacts(r.info.run_id)}]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/health")
        shoot(browser, base + runs_path(experiment.experiment_id), out / "runs.png", args.size)
        if trials:
            run = trials[0].info
            shoot(browser, f"{base}/#/experiments/{experiment.experiment_id}/runs/{run.run_id}/artifacts/genotype.png",
                  out / "genotype.png", args.size)
        else:
            print("no trial run with a genotype.png: only runs.png taken")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
