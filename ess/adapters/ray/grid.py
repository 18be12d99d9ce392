"""What varies between trials: the grids of variants, the hparam space, the names trials get."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ray import tune

from ess.adapters.mlflow.client import PHASE_TAG, config_tags
from ess.adapters.ray.config import DEFAULT_SPACE, INTER_KNOBS, INTRA_KNOBS, JobConfig
from ess.adapters.ray.spec import TrialSpec
from ess.config import config_to_dict
from ess.supernet import MODES


def transfer_variants(job: JobConfig, cells: Sequence[str]) -> list[dict[str, Any]]:
    """The grid task x cell x seed, one dict per trial (``cell_label`` names a cell of the job spec; seeds:
    ``job.transfer_seeds``, else the job's)."""
    return [{"task": task, "cell_label": cell, "seed": seed} for task in job.tasks for cell in cells
            for seed in job.transfer_seeds or job.seeds]


def search_variants(job: JobConfig, modes: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The grid mode x seed x node counts, one dict per trial.

    Counts a mode does not use collapse (intra mode fixes the inter cells to the identity, so
    ``n_inter`` and ``m`` do not matter; inter mode fixes the intra cell, so ``steps`` does not),
    which keeps the grid from running identical trials.
    """
    base = {"steps": job.search.steps, "n_inter": job.search.n_inter, "m": job.search.m}
    variants, seen = [], set()
    for mode in modes or job.modes:
        searched = MODES[mode]
        for seed in job.seeds:
            for steps in job.steps or (base["steps"],):
                for n_inter in job.n_inter or (base["n_inter"],):
                    for m in job.m or (base["m"],):
                        v = {"mode": mode, "seed": seed, "steps": steps, "n_inter": n_inter, "m": m}
                        if not searched.searches_inter:
                            v["n_inter"], v["m"] = (job.n_inter or (base["n_inter"],))[0], (job.m or (base["m"],))[0]
                        if not searched.searches_intra:
                            v["steps"] = (job.steps or (base["steps"],))[0]
                        key = tuple(sorted(v.items()))
                        if key not in seen:
                            seen.add(key)
                            variants.append(v)
    return variants


def variant_label(v: Mapping[str, Any]) -> str:
    if "genotype_label" in v:
        return f"retrain_{v['genotype_label']}"
    if "cell_label" in v:
        return f"{v.get('task')}_{v['cell_label']}_s{v.get('seed')}"
    parts = [str(v.get("mode", "search"))] + ([f"s{v['seed']}"] if v.get("seed") is not None else [])
    if "steps" in v:
        parts.append(f"n{v['steps']}-{v.get('n_inter')}-{v.get('m')}")
    if v.get("label"):
        parts.append(str(v["label"]))
    return "_".join(parts)


def _sample_mark(config: Mapping[str, Any], trial_id: str) -> str:
    """``#k`` (k from the trial id) for a configuration a searcher sampled: its trials share one variant."""
    number = trial_id.rsplit("_", 1)[-1]
    sampled = any(k not in ("ess", "variant") for k in config)
    return f"#{int(number)}" if sampled and number.isdigit() else ""


def trial_label(config: Mapping[str, Any], trial_id: str) -> str:
    """A trial's label in progress lines: its variant's, marked when sampled (``joint_s3_n8-3-3#2``)."""
    return variant_label(variant_of(config)) + _sample_mark(config, trial_id)


def trial_name(trial: Any) -> str:
    """Tune trial names from the variant (``joint_s3_n8-3-3``) instead of the whole dict."""
    variant = trial.config.get("variant")
    if isinstance(variant, Mapping):
        return f"{variant_label(variant)}_{trial.trial_id}"
    return f"{trial.trainable_name}_{trial.trial_id}"


def variant_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's own values: the ``variant`` dict of a grid plus the top-level keys a searcher tuned."""
    return {**(config.get("variant") or {}), **{k: v for k, v in config.items() if k not in ("ess", "variant")}}


def trial_identity(config: Mapping[str, Any], trial_id: str, trial_name: str,
                   configs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Who a trial is, as its MLflow run names it: phase, run name and tags (mode, seed, node counts, labels)."""
    spec, variant = TrialSpec.from_config(config["ess"], f"trial {trial_name}"), variant_of(config)
    configs = configs or spec.run_configs(variant, f"trial {trial_name}")
    if configs["search"] is not None:
        phase = "search+retrain" if configs["train"] is not None else "search"
        values = config_to_dict(configs["search"])
        tags = {**config_tags(values), **{f"variant.{k}": v for k, v in variant.items() if k not in values}}
        if not MODES[configs["search"].mode].searches_intra:   # its ``steps`` tag is moot: the intra cell is fixed
            tags["ess.fixed_intra"] = configs["search"].intra_genotype
        run_name = variant_label({**values, **variant}) + _sample_mark(config, trial_id)
    elif configs["transfer"] is not None:
        phase, cfg, label = "transfer", configs["transfer"], str(variant.get("cell_label"))
        tags = {"task": cfg.task, "cell": label, "seed": str(cfg.seed),
                **{f"source.{k}": v for k, v in (spec.cell_info.get(label) or {}).items()}}
        run_name = variant_label(variant)
    else:
        phase, label = "retrain", str(variant.get("genotype_label"))
        values = {k: v for k, v in config_to_dict(configs["train"]).items() if k != "genotype"}
        tags = {**config_tags(values), "genotype": label,
                **{f"source.{k}": v for k, v in (spec.genotype_info.get(label) or {}).items()}}
        run_name = variant_label(variant)
    if "arm" in variant:   # a study's arm: its runs group by it
        tags["arm"] = variant["arm"]
    tags.update({PHASE_TAG: phase, "job": spec.job or None, "ray.trial_name": trial_name,
                 "ray.experiment": spec.experiment_name or None})
    return {"trial_id": trial_id, "trial_name": trial_name, "experiment": spec.experiment_name or None,
            "mlflow_experiment": spec.mlflow_experiment or None, "phase": phase, "run_name": run_name,
            "tags": {k: str(v) for k, v in tags.items() if v is not None}}


def tune_space(job: JobConfig) -> dict[str, Any]:
    """``job.space`` (checked by JobConfig), or :data:`DEFAULT_SPACE` less the knobs the first mode fixes,
    as Tune distributions."""
    searched = MODES[job.modes[0]]   # hparam_search runs the first mode
    default = {k: v for k, v in DEFAULT_SPACE.items()   # no knobs the mode fixes (m, n_inter in intra mode)
               if (searched.searches_inter or k not in INTER_KNOBS)
               and (searched.searches_intra or k not in INTRA_KNOBS)}
    return {name: tune.choice(list(spec[1])) if spec[0] == "choice" else getattr(tune, spec[0])(*spec[1:])
            for name, spec in (job.space or default).items()}


__all__ = ["search_variants", "transfer_variants", "trial_identity", "trial_label", "trial_name", "tune_space",
           "variant_label", "variant_of"]
