"""The Tune function trainables: a search (then its retrain), a retrain, a transfer run.

``config['ess']`` holds the static spec of the experiment: the run configs as plain mappings (each
crosses the Ray boundary once and is rebuilt here, once, into its typed config), genotypes as
:class:`~ess.space.ESSGenotype` objects or built-in names, tracking. The rest of the config
(``variant`` from a grid, or tuned top-level keys from a searcher) overrides fields of the trial's
config (:func:`~ess.adapters.ray.grid.trial_config`). Each epoch reports one flat row and the run
directory as the checkpoint; MLflow params are logged from the same typed configs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from ess.adapters.ray.grid import trial_config, variant_label
from ess.adapters.ray.trial import Trial
from ess.config import config_from_mapping, config_to_dict
from ess.errors import ConfigError
from ess.runs import EpochReport
from ess.search.config import SearchConfig
from ess.space.genotype import ESSGenotype, builtin_name, load_genotype, save_genotype
from ess.train import TrainConfig
from ess.transfer import TransferConfig

C = TypeVar("C")


def typed(trial: Trial, key: str, cls: type[C], *, variant: bool = True) -> C:
    """The trial's ``cls`` config: rebuilt from the spec's mapping, then (``variant``) the trial's own values."""
    cfg = config_from_mapping(cls, trial.spec[key], f"trial {trial.trial_name}: {key}")
    return trial_config(cfg, trial.variant(), f"trial {trial.trial_name}") if variant else cfg


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
    """The search phase; returns the result and its last row (the final search metrics and genotype)."""
    from ess.search import search
    from ess.space.derive import arch_weight_rows

    search_dir = Path(cfg.run_dir)
    tracker = trial.tracker
    last: dict[str, Any] = {}

    def on_epoch(rep: EpochReport) -> None:
        tracker.log_metrics(rep.metrics, step=rep.epoch)
        for key, path in rep.artifacts.items():
            tracker.log_artifact(path, "genotypes" if key in ("genotype", "picture") else "arch_weights")
        tracker.log_artifact(search_dir / "arch_weights.json")
        row = {**rep.metrics, "genotype": rep.genotype.to_json(None) if rep.genotype else ""}
        last.clear()
        last.update(row)
        trial.report(row, checkpoint=trial.wants_checkpoint(rep.epoch, cfg.epochs),
                     last=last_phase and rep.epoch >= cfg.epochs)

    result = search(cfg, resume=(search_dir / "checkpoint.pt").is_file(), on_epoch=on_epoch)
    for name in ("genotype.json", "genotype.png", "genotype.svg", "arch_weights.json", "config.yaml",
                 "metrics.jsonl"):
        tracker.log_artifact(search_dir / name)
    weights = search_dir / "arch_weights.json"
    if weights.exists():
        tracker.log_table(arch_weight_rows(json.loads(weights.read_text())), "arch_weights_table.json")
    tracker.log_artifact(search_dir / "checkpoint.pt", "model")
    tracker.set_tags({"ess.genotype": result.genotype.to_json(None)})
    if not last and result.rows:  # restored after the last epoch: nothing new was reported
        last.update({**result.rows[-1], "genotype": result.genotype.to_json(None)})
    return result, last


def run_retrain(trial: Trial, cfg: TrainConfig, *, prefix: str = "retrain/") -> dict[str, Any]:
    """The retraining phase; returns the final row."""
    from ess.train import train

    train_dir = Path(cfg.run_dir)
    tracker = trial.tracker

    def on_epoch(rep: EpochReport) -> None:
        row = {f"{prefix}{k}": v for k, v in rep.metrics.items()}
        tracker.log_metrics(row, step=rep.epoch)
        trial.report(row, checkpoint=trial.wants_checkpoint(rep.epoch, cfg.epochs), last=rep.epoch >= cfg.epochs)

    final = train(cfg, resume=(train_dir / "checkpoint.pt").is_file(), on_epoch=on_epoch)
    final_row = {f"{prefix}{k}": v for k, v in final.items()}
    tracker.log_metrics(final_row, step=int(final.get("epoch", cfg.epochs)))
    for name in ("final.json", "config.yaml", "metrics.jsonl", "genotype.json"):
        tracker.log_artifact(train_dir / name, "retrain")
    tracker.log_artifact(train_dir / "best.pt", "model")
    return final_row


def search_trainable(config: dict[str, Any]) -> None:
    """An ESS search, then (when ``config['ess']['train']``) a retrain of its genotype: the ablation trial.

    A row reported by the retrain repeats the last search row, so every row of an ablation trial has
    the same columns; the final row (``final: 1``) adds the test perplexity.
    """
    from ess.adapters.mlflow import config_tags, flat_params
    from ess.supernet import MODES

    retrain = bool(config["ess"].get("train"))
    trial = Trial(config, "search+retrain" if retrain else "search")
    variant = trial.variant()
    search = typed(trial, "search", SearchConfig)
    train = typed(trial, "train", TrainConfig, variant=False) if retrain else None
    values = config_to_dict(search)
    params = {**flat_params(values, "search."), **(flat_params(config_to_dict(train), "retrain.") if train else {})}
    tags = {**config_tags(values), **{f"variant.{k}": v for k, v in variant.items() if k not in values}}
    if not MODES[search.mode].searches_intra:   # its ``steps`` tag is moot: the intra cell is fixed
        tags["ess.fixed_intra"] = search.intra_genotype
    trial.open_tracker(variant_label({**values, **variant}), tags, params)
    with trial.running():
        result, last = run_search(trial, search, last_phase=not retrain)
        if train is not None and not trial.stopped:
            trial.carry = dict(last)   # every retrain row repeats the final search row (metric columns line up)
            final = run_retrain(trial, dataclasses.replace(train, genotype=str(trial.run / "search" / "genotype.json")))
            trial.report({**final, "final": 1})


def retrain_trainable(config: dict[str, Any]) -> None:
    """Retrain one genotype (``variant.genotype_label`` in ``ess.genotypes``)."""
    from ess.adapters.mlflow import config_tags, flat_params

    trial = Trial(config, "retrain")
    variant = trial.variant()
    label = str(variant.get("genotype_label"))
    ref = (config["ess"].get("genotypes") or {}).get(label)
    if ref is None:
        raise ConfigError(f"trial {trial.trial_name}: no genotype {label!r} in the job spec")
    info = config["ess"].get("genotype_info", {}).get(label, {})
    train = dataclasses.replace(typed(trial, "train", TrainConfig), genotype=genotype_ref(trial, ref, "genotype.json"))
    values = config_to_dict(train)
    tags = {**config_tags({k: v for k, v in values.items() if k != "genotype"}), "genotype": label,
            **{f"source.{k}": v for k, v in info.items()}}
    trial.open_tracker(variant_label(variant), tags, flat_params(values, "retrain."))
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
    from ess.adapters.mlflow import flat_params, numeric_metrics
    from ess.transfer import transfer

    trial = Trial(config, "transfer")   # restores the latest checkpoint into the run directory first
    variant = trial.variant()
    label = str(variant.get("cell_label"))
    ref = (config["ess"].get("cells") or {}).get(label)
    if ref is None:
        raise ConfigError(f"trial {trial.trial_name}: no cell {label!r} in the job spec")
    cell = "lstm" if ref == "lstm" else genotype_ref(trial, ref, "cell_genotype.json")
    cfg = dataclasses.replace(typed(trial, "transfer", TransferConfig), cell=cell)
    run_dir = Path(cfg.run_dir)
    params = flat_params({k: v for k, v in config_to_dict(cfg).items() if k != "cell"}, "transfer.")
    tags = {"task": cfg.task, "cell": label, "seed": str(cfg.seed),
            **{f"source.{k}": v for k, v in (config["ess"].get("cell_info", {}).get(label) or {}).items()}}
    trial.open_tracker(variant_label(variant), tags, params)
    tracker = trial.tracker
    with trial.running():
        trial.carry = {"task": cfg.task, "cell": label, "seed": cfg.seed}

        def on_epoch(rep: EpochReport) -> None:
            tracker.log_metrics(rep.metrics, step=rep.epoch)
            trial.report(dict(rep.metrics), checkpoint=trial.wants_checkpoint(rep.epoch, cfg.epochs),
                         last=rep.epoch >= cfg.epochs)

        final = transfer(cfg, resume=(run_dir / "checkpoint.pt").is_file(), on_epoch=on_epoch)
        final_row = {k: v for k, v in numeric_metrics(final).items() if k != "seed"}
        tracker.log_metrics(final_row, step=int(final.get("epoch", cfg.epochs)))
        for name in ("final.json", "config.yaml", "metrics.jsonl", "test_report.txt", "genotype.json"):
            tracker.log_artifact(run_dir / name, "transfer")
        tracker.log_artifact(run_dir / "predictions" / "test.txt", "transfer/predictions")
        tracker.log_artifact(run_dir / "best.pt", "model")
        trial.report({**final_row, "final": 1})


__all__ = ["genotype_ref", "retrain_trainable", "run_retrain", "run_search", "search_trainable", "transfer_trainable",
           "typed"]
