"""The spec every trial of a stage shares: typed on both sides, plain data (``config['ess']``) in between.

The driver makes a :class:`TrialSpec` (:meth:`Experiment.spec <ess.adapters.ray.experiment.Experiment.spec>`),
which crosses the Ray boundary once as :meth:`TrialSpec.to_config` (run configs as plain mappings, so Tune's
``params.json`` and ``analysis`` read them as data; genotypes as :class:`~ess.space.ESSGenotype` objects or
built-in names); each trial rebuilds it once with :meth:`TrialSpec.from_config`, unknown keys rejected, and
takes its typed run configs from :meth:`TrialSpec.run_configs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ess.config import check, config_from_mapping, config_to_dict
from ess.errors import ConfigError
from ess.search.config import SearchConfig
from ess.space.genotype import ESSGenotype
from ess.train import TrainConfig
from ess.transfer import TransferConfig

C = TypeVar("C")
#: the run configs a spec may hold, by field
RUN_CONFIGS: dict[str, type] = {"search": SearchConfig, "train": TrainConfig, "transfer": TransferConfig}
RETRAIN_SEEDS = ("", "search")


def trial_config(base: C, variant: Mapping[str, Any], source: str) -> C:
    """``base`` (a run config) with the variant's values of its own fields: the one place a trial's
    grid values or tuned samples become its typed config."""
    names = {f.name for f in dataclasses.fields(base)}
    return config_from_mapping(type(base), {k: v for k, v in variant.items() if k in names}, source, base=base)


@dataclass(frozen=True)
class TrialSpec:
    """What the trials of one stage share."""

    job: str = ""                         # the job kind (joint_search, study ...)
    experiment_name: str = ""             # the experiment (its directory's name)
    mlflow_experiment: str = ""           # where the driver shows the trials (trials never talk to MLflow)
    checkpoint_every: int = 1             # epochs between checkpoints (the last epoch always has one)
    system_metrics: bool = True           # sample CPU, memory (and GPU) into the run directory
    system_metrics_interval: float = 10.0
    search: SearchConfig | None = None    # a search trial's config (mode, seed, node counts: the variant's)
    train: TrainConfig | None = None      # the retraining (after the search, or alone)
    transfer: TransferConfig | None = None
    retrain_seed: str = ""                # "search": the retraining takes the search's seed (a study trial)
    genotypes: Mapping[str, ESSGenotype | str] = field(default_factory=dict)   # retrain: by genotype_label
    genotype_info: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)   # their sources, as tags
    cells: Mapping[str, ESSGenotype | str] = field(default_factory=dict)       # transfer: by cell_label
    cell_info: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        check(self.system_metrics_interval > 0, "system_metrics_interval", "must be positive")
        check(self.retrain_seed in RETRAIN_SEEDS, "retrain_seed",
              f"must be one of {RETRAIN_SEEDS}, got {self.retrain_seed!r}")
        for name, cls in RUN_CONFIGS.items():
            value = getattr(self, name)
            check(value is None or isinstance(value, cls), name, f"expected a {cls.__name__}, got {value!r}"[:200])

    def to_config(self) -> dict[str, Any]:
        """The spec as it crosses the Ray boundary (``config['ess']``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in RUN_CONFIGS:
            out[name] = None if out[name] is None else config_to_dict(out[name])
        for name in ("genotypes", "genotype_info", "cells", "cell_info"):
            out[name] = dict(out[name])
        return out

    @classmethod
    def from_config(cls, data: Mapping[str, Any], source: str) -> TrialSpec:
        """The spec again from :meth:`to_config`'s data (one-line ConfigError naming ``source`` and the key)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown spec keys {unknown}")
        values = dict(data)
        for name, config in RUN_CONFIGS.items():
            if values.get(name) is not None:
                values[name] = config_from_mapping(config, values[name], f"{source}: {name}")
        for name in ("genotypes", "genotype_info", "cells", "cell_info"):
            values[name] = dict(values.get(name) or {})
        try:
            return cls(**values)
        except (ConfigError, TypeError) as err:
            raise ConfigError(f"{source}: {err}") from None

    def run_configs(self, variant: Mapping[str, Any], source: str) -> dict[str, Any]:
        """The typed run configs of one trial: the spec's, with the trial's own ``variant`` values.

        The search and the tagger take the variant's values; a retraining takes them only in a retrain-only
        trial (the seed of a search variant is the search's), and the search's seed with ``retrain_seed``.
        """
        out: dict[str, Any] = {name: getattr(self, name) for name in RUN_CONFIGS}
        for name, value in out.items():
            if value is not None and (name != "train" or self.search is None):
                out[name] = trial_config(value, variant, source)
        if self.retrain_seed == "search" and out["search"] is not None and out["train"] is not None:
            out["train"] = dataclasses.replace(out["train"], seed=out["search"].seed)   # one seed per study trial
        return out


__all__ = ["RUN_CONFIGS", "TrialSpec", "trial_config"]
