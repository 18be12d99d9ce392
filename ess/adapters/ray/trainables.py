"""The Tune function trainables: a search (then its retrain), a retrain, a transfer run.

``config['ess']`` holds the static spec of the experiment (configs, tracking); the rest of the
config (``variant`` from a grid, or tuned top-level keys from a searcher) overrides fields of the
trial's config. Each epoch reports one flat row and the run directory as the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ess.adapters.ray.grid import variant_label
from ess.adapters.ray.trial import Trial
from ess.checkpoint import atomic_write_text
from ess.config import config_from_mapping
from ess.errors import ConfigError
from ess.runs import EpochReport


def _load_genotype_text(text: str):
    from ess.space.genotype import parse_genotype_json

    return parse_genotype_json(text, "trial genotype")


def run_search(trial: Trial, *, last_phase: bool = True) -> tuple[Any, dict[str, Any]]:
    """The search phase; returns the result and its last row (the final search metrics and genotype)."""
    from ess.search import SearchConfig, search
    from ess.space.derive import arch_weight_rows

    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    values = {**trial.spec["search"], **{k: v for k, v in trial.variant().items() if k in fields}}
    cfg = config_from_mapping(SearchConfig, values, f"trial {trial.trial_name}")
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


def run_retrain(trial: Trial, genotype: str, *, prefix: str = "retrain/") -> dict[str, Any]:
    """The retraining phase of ``genotype`` (a built-in name or a file); returns the final row."""
    from ess.train import TrainConfig, train

    values = dict(trial.spec["train"])
    values["genotype"] = genotype
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if trial.phase == "retrain":  # a retrain-only trial: its variant may set TrainConfig fields (seed ...)
        values.update({k: v for k, v in trial.variant().items() if k in fields and k != "genotype"})
    cfg = config_from_mapping(TrainConfig, values, f"trial {trial.trial_name}")
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

    trial = Trial(config, "search+retrain" if config["ess"].get("train") else "search")
    variant = trial.variant()
    search_values = {**config["ess"]["search"], **{k: v for k, v in variant.items() if k in config["ess"]["search"]}}
    params = {**flat_params(search_values, "search."), **flat_params(config["ess"].get("train") or {}, "retrain.")}
    tags = {**config_tags(search_values), **{f"variant.{k}": v for k, v in variant.items()
                                             if k not in search_values}}
    mode = MODES.get(str(search_values.get("mode")))
    if mode is not None and not mode.searches_intra:   # its ``steps`` tag is moot: the intra cell is fixed
        tags["ess.fixed_intra"] = search_values.get("intra_genotype")
    trial.open_tracker(variant_label({**search_values, **variant}), tags, params)
    with trial.running():
        result, last = run_search(trial, last_phase=not config["ess"].get("train"))
        if config["ess"].get("train") and not trial.stopped:
            trial.carry = dict(last)   # every retrain row repeats the final search row (metric columns line up)
            final = run_retrain(trial, str(trial.run / "search" / "genotype.json"))
            trial.report({**final, "final": 1})


def retrain_trainable(config: dict[str, Any]) -> None:
    """Retrain one genotype (``variant.genotype_label`` in ``ess.genotypes``)."""
    from ess.adapters.mlflow import config_tags, flat_params

    trial = Trial(config, "retrain")
    variant = trial.variant()
    label = str(variant.get("genotype_label"))
    source = (config["ess"].get("genotypes") or {}).get(label)
    if source is None:
        raise ConfigError(f"trial {trial.trial_name}: no genotype {label!r} in the job spec")
    info = config["ess"].get("genotype_info", {}).get(label, {})
    if source.lstrip().startswith("{"):
        genotype_file = trial.run / "genotype.json"
        if not genotype_file.exists():
            atomic_write_text(genotype_file, _load_genotype_text(source).to_json() + "\n")
        genotype = str(genotype_file)
    else:
        genotype = source   # a built-in name
    train_values = {**config["ess"]["train"], "genotype": genotype}
    params = flat_params(train_values, "retrain.")
    tags = {**config_tags({k: v for k, v in train_values.items() if k != "genotype"}), "genotype": label,
            **{f"source.{k}": v for k, v in info.items()}}
    trial.open_tracker(variant_label(variant), tags, params)
    with trial.running():
        trial.carry = {"genotype": _load_genotype_text(source).to_json(None) if source.lstrip().startswith("{")
                       else source, "genotype_label": label}
        final = run_retrain(trial, genotype)
        trial.report({**final, "final": 1})


def transfer_trainable(config: dict[str, Any]) -> None:
    """Train a tagger with one cell on one task and seed (:func:`ess.transfer.transfer`).

    ``variant`` holds ``task``, ``cell_label`` (a key of ``ess.cells``: ``lstm``, a built-in name or
    genotype JSON text) and ``seed``. Each epoch reports the epoch row (``train/loss``, ``dev/f1`` ...);
    the last row adds the best-dev model's ``test/...`` scores.
    """
    from ess.adapters.mlflow import flat_params, numeric_metrics
    from ess.transfer import TransferConfig, transfer

    trial = Trial(config, "transfer")   # restores the latest checkpoint into the run directory first
    variant = trial.variant()
    label = str(variant.get("cell_label"))
    source = (config["ess"].get("cells") or {}).get(label)
    if source is None:
        raise ConfigError(f"trial {trial.trial_name}: no cell {label!r} in the job spec")
    if source.lstrip().startswith("{"):
        genotype_file = trial.run / "cell_genotype.json"
        if not genotype_file.exists():
            atomic_write_text(genotype_file, _load_genotype_text(source).to_json() + "\n")
        cell = str(genotype_file)
    else:
        cell = source   # lstm or a built-in name
    fields = {f.name for f in dataclasses.fields(TransferConfig)}
    values = {**config["ess"]["transfer"], **{k: v for k, v in variant.items() if k in fields}, "cell": cell}
    cfg = config_from_mapping(TransferConfig, values, f"trial {trial.trial_name}")
    run_dir = Path(cfg.run_dir)
    params = flat_params({k: v for k, v in values.items() if k != "cell"}, "transfer.")
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


__all__ = ["retrain_trainable", "run_retrain", "run_search", "search_trainable", "transfer_trainable"]
