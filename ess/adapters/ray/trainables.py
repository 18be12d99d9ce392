"""The Tune function trainables: a search (then its retrain), a retrain, a transfer run.

``config['ess']`` holds the stage's :class:`~ess.adapters.ray.spec.TrialSpec` as plain data (it crosses
the Ray boundary once and is rebuilt in the trial, once: :attr:`Trial.spec`, its typed run configs
:attr:`Trial.configs`). The rest of the config (``variant`` from a grid, or tuned top-level keys from a
searcher) sets fields of the trial's configs. Each epoch reports one flat row and the run directory as the checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ess.adapters.mlflow.client import numeric_metrics
from ess.adapters.ray.trial import Trial
from ess.errors import ConfigError
from ess.runs import EpochReport
from ess.search import search
from ess.search.config import SearchConfig
from ess.space.derive import identity_share
from ess.space.genotype import ESSGenotype, builtin_name, save_genotype
from ess.space.refs import load_genotype
from ess.train import TrainConfig, train
from ess.transfer import transfer


def genotype_ref(trial: Trial, ref: ESSGenotype | str, name: str) -> str:
    """A genotype as a run config names it: a built-in's name, else a file written once in the run directory."""
    builtin = builtin_name(ref)
    if builtin is not None:
        return builtin
    path = trial.run / name
    if not path.exists():
        save_genotype(load_genotype(ref), path)
    return str(path)


def run_search(trial: Trial, cfg: SearchConfig, *, last_phase: bool = True) -> tuple[Any, dict[str, Any]]:
    """The search phase; returns the result and its last row (the final search metrics and genotype).

    The last epoch's row is reported once the search has returned, so that its checkpoint holds the
    final genotype picture too.
    """
    last: dict[str, Any] = {}

    def on_epoch(rep: EpochReport) -> None:
        last.clear()
        last.update({**rep.metrics, "genotype": rep.genotype.to_json(None) if rep.genotype else ""})
        if rep.epoch < cfg.epochs:
            trial.report(dict(last), checkpoint=trial.wants_checkpoint(rep.epoch, cfg.epochs))

    result = search(cfg, resume=(Path(cfg.run_dir) / "checkpoint.pt").is_file(), on_epoch=on_epoch)
    if last:
        last.update(selected(result))
        trial.report(dict(last), last=last_phase)
    elif result.rows:  # restored after the last epoch: nothing new to report
        last.update({**result.rows[-1], **selected(result)})
    return result, last


def selected(result: Any) -> dict[str, Any]:
    """The genotype the search returns (what is retrained) and its shares, as ``genotype`` and ``selected/*``.

    The epoch rows' ``genotype/*`` describe each epoch's argmax derivation; the returned genotype may be
    another (``--derive perturbation``, ``--select best_valid``)."""
    selection = result.selection or {}
    shares = selection.get("identity_share") or {}
    out: dict[str, Any] = {"genotype": result.genotype.to_json(None)}
    for part, share in shares.items():
        out[f"selected/{part}/identity_share"] = share
    for part, share in (selection.get("decided_share") or {}).items():
        out[f"selected/{part}/decided_share"] = share
    if shares:
        out["selected/identity_share"] = identity_share(result.genotype, tuple(shares))
    if "decided" in selection:
        out["selected/decided"] = float(selection["decided"])
    moved = selection.get("stability") or {}
    for key in ("changed_epoch_share", "kept_from_middle", "changed_choices"):
        if key in moved:
            out[f"evidence/{key}"] = float(moved[key])
    if "seconds" in selection:
        out["selection/seconds"] = float(selection["seconds"])
    return out


def run_retrain(trial: Trial, cfg: TrainConfig, *, prefix: str = "retrain/") -> dict[str, Any]:
    """The retraining phase; returns the final row."""
    def on_epoch(rep: EpochReport) -> None:
        row = {f"{prefix}{k}": v for k, v in rep.metrics.items()}
        trial.report(row, checkpoint=trial.wants_checkpoint(rep.epoch, cfg.epochs), last=rep.epoch >= cfg.epochs)

    final = train(cfg, resume=(Path(cfg.run_dir) / "checkpoint.pt").is_file(), on_epoch=on_epoch)
    return {f"{prefix}{k}": v for k, v in final.items()}


def search_trainable(config: dict[str, Any]) -> None:
    """An ESS search, then (when ``config['ess']['train']``) a retrain of its genotype: the ablation trial.

    A row reported by the retrain repeats the last search row, so every row of an ablation trial has
    the same columns; the final row (``final: 1``) adds the test perplexity.
    """
    trial = Trial(config)
    search, train = trial.configs["search"], trial.configs["train"]
    with trial.running():
        _, last = run_search(trial, search, last_phase=train is None)
        if train is not None and not trial.stopped:
            trial.carry = dict(last)   # every retrain row repeats the final search row (metric columns line up)
            final = run_retrain(trial, dataclasses.replace(train, genotype=str(trial.run / "search" / "genotype.json")))
            trial.report({**final, "final": 1})


def retrain_trainable(config: dict[str, Any]) -> None:
    """Retrain one genotype (``variant.genotype_label`` in ``ess.genotypes``)."""
    trial = Trial(config)
    label = str(trial.variant().get("genotype_label"))
    ref = trial.spec.genotypes.get(label)
    if ref is None:
        raise ConfigError(f"trial {trial.trial_name}: no genotype {label!r} in the job spec")
    train = dataclasses.replace(trial.configs["train"], genotype=genotype_ref(trial, ref, "genotype.json"))
    with trial.running():
        trial.carry = {"genotype": builtin_name(ref) or load_genotype(ref).to_json(None), "genotype_label": label}
        final = run_retrain(trial, train)
        trial.report({**final, "final": 1})


def transfer_trainable(config: dict[str, Any]) -> None:
    """Train a tagger with one cell on one task and seed (:func:`ess.transfer.transfer`).

    ``variant`` holds ``task``, ``cell_label`` (a key of ``ess.cells``: ``lstm``, a built-in name or an
    :class:`~ess.space.ESSGenotype`) and ``seed``. Each epoch reports the epoch row (``train/loss``,
    ``dev/f1`` ...); the last row adds the best-dev model's ``test/...`` scores.
    """
    trial = Trial(config)   # restores the latest checkpoint into the run directory first
    label = str(trial.variant().get("cell_label"))
    ref = trial.spec.cells.get(label)
    if ref is None:
        raise ConfigError(f"trial {trial.trial_name}: no cell {label!r} in the job spec")
    cell = "lstm" if ref == "lstm" else genotype_ref(trial, ref, "cell_genotype.json")
    cfg = dataclasses.replace(trial.configs["transfer"], cell=cell)
    with trial.running():
        trial.carry = {"task": cfg.task, "cell": label, "seed": cfg.seed}

        def on_epoch(rep: EpochReport) -> None:
            trial.report(dict(rep.metrics), checkpoint=trial.wants_checkpoint(rep.epoch, cfg.epochs),
                         last=rep.epoch >= cfg.epochs)

        final = transfer(cfg, resume=(Path(cfg.run_dir) / "checkpoint.pt").is_file(), on_epoch=on_epoch)
        trial.report({**{k: v for k, v in numeric_metrics(final).items() if k != "seed"}, "final": 1})


__all__ = ["genotype_ref", "retrain_trainable", "run_retrain", "run_search", "search_trainable", "selected",
           "transfer_trainable"]
