"""What every job in ``tune_jobs/`` shares: its entry point, preflight checks, trial results, closing lines."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ess.adapters.mlflow import ui_hint
from ess.adapters.mlflow.client import experiment_id_of
from ess.adapters.ray.config import JobConfig, parse_job_args
from ess.adapters.ray.experiment import Experiment, ExperimentInterrupted, check_resources, ray_session
from ess.adapters.storage import exists, is_uri, join, read_text
from ess.cli import run_main
from ess.data import ensure_corpus
from ess.errors import DataError, ESSError
from ess.kernels import cpu
from ess.search.evidence import ArmEvidence
from ess.search.evidence import arm_evidence as evidence_of_arm
from ess.space.description import describe as one_line
from ess.space.genotype import builtin_name
from ess.space.refs import load_genotype
from ess.supernet import MODES
from ess.tagging.conll import get_task, task_paths

Summary = dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Before Ray starts


def ensure_tasks(tasks: Sequence[str], data_dir: str | None = None) -> None:
    """One-line DataError (before Ray starts) when a tagging task's files are missing."""
    for task in tasks:
        get_task(task)
        missing = [str(p) for p in task_paths(task, data_dir).values() if not p.is_file()]
        if missing:
            raise DataError(f"task {task!r}: missing {', '.join(missing)} (set ESS_DATA_DIR / --data-dir)")


@contextmanager
def experiment(kind: str, job: JobConfig, *, resume: bool = False, corpus: bool = True) -> Iterator[Experiment]:
    """The corpus checked, Ray up with room for a trial, the experiment opened (its parent run closed once)."""
    if corpus:
        ensure_corpus(job.dataset, job.data_dir or None)
    if not job.gpus_per_trial and not job.address:
        cpu.load()   # the C++ steps built here, once, announced (cached for the trials), not in every trial
    with ray_session(job):
        check_resources(job)
        with Experiment(kind, job, resume=resume) as exp:
            print(f"{kind}: results in {exp.root}", flush=True)   # announced once it exists
            yield exp


# --------------------------------------------------------------------------------------------------
# After a stage


def finite(value: Any) -> float:
    """``value`` as a float for sorting: missing, non-numeric and non-finite values sort last."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.inf
    return v if math.isfinite(v) else math.inf


def succeeded(trials: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    """The trials that did not fail; every one failing is one line naming the first error."""
    ok = [r for r in trials if r["error"] is None]
    if not ok:
        first = next((r["error"] for r in trials if r["error"]), "no trial reported")
        raise ESSError(f"all {len(trials)} {what} trials failed; first error: {first}")
    return ok


def artifact_files(checkpoint: str | None, sub: str) -> dict[str, str]:
    """Where a trial's genotype, pictures, weight tables and model are, in its last checkpoint."""
    if checkpoint is None:
        return {}
    base = join(checkpoint, sub)
    names = ("genotype.json", "genotype.png", "genotype.svg", "arch_weights.json", "checkpoint.pt", "best.pt",
             "final.json")
    found = {n: join(base, n) for n in names if exists(join(base, n))}
    if "genotype.png" not in found and not is_uri(base):   # the checkpoint of the last epoch holds its picture
        pictures = sorted(Path(base, "genotypes").glob("epoch_*.png"))
        if pictures:
            found["genotype.png"] = str(pictures[-1])
    return found


def run_costs(checkpoint: str | None, sub: str) -> tuple[float, float]:
    """Seconds and training tokens of a run (its ``metrics.jsonl`` in the trial's last checkpoint): every epoch's
    whole time where the loop records it (``epoch/seconds``: training, validation, read-out), else its training
    time, plus a search's final selection (``selection.json``: ranking, perturbation scores)."""
    path = Path(checkpoint or "", sub, "metrics.jsonl")
    if not checkpoint or not path.is_file():
        return float("nan"), float("nan")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    seconds = sum(r.get("epoch/seconds", r.get("train/seconds", 0.0)) for r in rows)
    seconds += float(run_selection(checkpoint, sub).get("seconds", 0.0))
    return seconds, sum(r.get("train/seconds", 0.0) * r.get("train/tokens_per_s", 0.0) for r in rows)


def run_selection(checkpoint: str | None, sub: str = "search") -> dict[str, Any]:
    """A search's ``selection.json`` in the trial's last checkpoint (how its genotype was chosen, its
    stability); empty when there is none."""
    path = join(checkpoint or "", sub, "selection.json")
    if not checkpoint or not exists(path):
        return {}
    return json.loads(read_text(path))


def arm_evidence(trials: Sequence[Mapping[str, Any]], search: Any) -> ArmEvidence:
    """The evidence of searches of one mode and space (``trials``: their rows, with ``genotype`` and
    ``checkpoint``; ``search``: their SearchConfig): seed agreement of their genotypes and their stability
    (docs/method.md section 11)."""
    genotypes = [load_genotype(t["genotype"]) for t in trials]
    stabilities = [run_selection(t.get("checkpoint")).get("stability") for t in trials]
    mode = MODES[search.mode]
    searched = list(mode.parts)
    return evidence_of_arm(genotypes, stabilities, searched, steps=search.steps, m=search.m, n_inter=search.n_inter,
                           intra_ops=search.intra_ops, inter_ops=search.inter_ops)


# --------------------------------------------------------------------------------------------------
# The console


def describe(genotype: str | None) -> str:
    """A genotype of a summary (a built-in name or JSON text) in a few lines; other text stays as it is."""
    if not genotype:
        return "(none)"
    try:
        return one_line(load_genotype(genotype))
    except ESSError:
        return genotype


def print_best(summary: Summary, out=None) -> None:
    """The best genotype of a summary, its perplexities and where its files are."""
    w = _writer(out)
    best = summary.get("best")
    if not best:
        return

    w(f"best genotype: {best['label']}")
    w("  " + describe(best.get("genotype")).replace("\n", "\n  "))
    if best.get("genotype") and not builtin_name(best["genotype"]):
        w("  " + best["genotype"])
    ppl = [f"search valid ppl {best['valid_ppl']:.2f}" if best.get("valid_ppl") is not None else None,
           f"retrain valid ppl {best['retrain_valid_ppl']:.2f}" if best.get("retrain_valid_ppl") else None,
           f"retrain test ppl {best['retrain_test_ppl']:.2f}" if best.get("retrain_test_ppl") else None]
    w("  " + ", ".join(p for p in ppl if p))
    w(f"artifacts: {best.get('checkpoint')}")
    for name, path in (best.get("artifacts") or {}).items():
        w(f"  {name}: {path}")


def print_evidence(evidence: Mapping[str, Any], best: Mapping[str, Any], out=None) -> None:
    """What the searches found, said plainly: their seed agreement against random genotypes and their stability
    (:func:`ess.search.evidence.arm_evidence`), then the best search's decided share as a diagnostic."""
    w = _writer(out)
    w(f"  evidence (docs/method.md section 11): {evidence['statement']}")
    agreement = evidence.get("agreement")
    if agreement and agreement["overall"]["p"] >= 0.05:
        w("  the seeds' genotypes agree no more than random genotypes of the space do (p >= 0.05): read the best "
          "genotype as one draw, not a finding")
    share, entropy = best.get("decided_share"), best.get("arch_entropy")
    if share is not None and entropy is not None:
        w(f"  diagnostic: {share:.0%} of the best search's choices are 1.5x their runner-up; its architecture "
          f"weights' relative entropy is {entropy:.3f} (1 = uniform; a 50-epoch GPU search of this space ends at "
          "0.985)")


def write_best_genotype(exp: Experiment, genotype: Any, title: str) -> None:
    """``best_genotype.png`` beside ``best_genotype.json`` at the top of the experiment (a local one)."""
    if is_uri(exp.root):
        return
    from ess.space.draw import draw_genotype  # matplotlib: 0.5 s at start, paid only where a picture is drawn

    draw_genotype(genotype, Path(exp.root) / "best_genotype", title=title, formats=("png",))


def readme(summary: Mapping[str, Any]) -> str:
    """``README.txt`` of an experiment folder: what is where."""
    return "\n".join([
        f"{summary.get('job', 'job')} experiment {summary.get('name', '')}", "",
        "best_genotype.json  the genotype the job chose (python -m ess.space show best_genotype.json draws it)",
        "best_genotype.png   its picture",
        "summary.json        everything the job printed at the end: every trial, its perplexities and files",
        "job.yaml            the resolved config (python tune_jobs/<job>.py --resume --name NAME continues)",
        "<stage>/            Ray Tune's folders: one per trial, its checkpoints holding the run directory",
        "                    (metrics.jsonl, genotypes/, derivations/, arch_weights/, checkpoint.pt)",
        f"MLflow: experiment {summary.get('mlflow_experiment')!r} in {summary.get('tracking_uri')}", ""])


def _writer(out) -> Callable[..., None]:
    out = out or sys.stdout
    return lambda s="": print(s, file=out)


def print_footer(summary: Summary, out=None) -> None:
    """Where the experiment is, and how to open its MLflow runs."""
    w = _writer(out)
    w(f"experiment: {summary['experiment_dir']} (summary.json, job.yaml)")
    if summary.get("tracking_uri"):
        w(f"MLflow: experiment {summary['mlflow_experiment']!r}, parent run {summary['parent_run_id']}")
    uri = summary.get("tracking_uri")
    w(ui_hint(uri, experiment_id_of(uri, summary.get("mlflow_experiment") or "")))


def main(kind: str, run: Callable[..., Summary], report: Callable[[Summary], None], argv: list[str] | None = None,
         *, description: str | None = None) -> int:
    """A job's command line: parse, run, print its ``report`` and the footer; an ESSError is one line."""
    @run_main
    def _main(argv: list[str] | None) -> int:
        cfg, args = parse_job_args(kind, argv, description=description)
        start = time.perf_counter()
        print(f"{kind}: experiment {cfg.name!r}{' (resuming)' if args.resume else ''}", flush=True)
        try:
            summary = run(cfg, resume=args.resume)
        except ExperimentInterrupted as err:
            print(f"interrupted: {err}", file=sys.stderr, flush=True)
            return 130
        print(f"\n== {kind} {summary['name']} finished ==")
        report(summary)
        print_footer(summary)
        print(f"wall time: {time.perf_counter() - start:.1f} s", flush=True)
        return 0

    return _main(argv)


__all__ = ["arm_evidence", "artifact_files", "describe", "ensure_corpus", "ensure_tasks", "experiment", "finite",
           "main", "print_best", "print_evidence", "print_footer", "run_costs", "run_selection", "succeeded"]
