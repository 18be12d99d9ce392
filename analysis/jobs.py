"""What a report shows for each job kind of ``tune_jobs/``: its title, its arms, its sections.

The kind is the ``job`` tag of the parent run and of every trial run (``ess.adapters.ray.experiment``),
``job`` in a Ray trial's config; a frame of several kinds, or of none, gets the neutral :data:`GENERIC`.

Sections: ``arms`` (per-arm statistics), ``comparisons`` (tests between arms), ``configs`` (the sampled
configurations of a hyperparameter search, ranked), ``search`` (search curves and collapse signals),
``retrain`` and ``transfer`` (their curves), ``genotypes`` (ranking, op and predecessor frequencies).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.arms import ARM

SEARCH_SECTIONS = ("arms", "comparisons", "search", "evidence", "genotypes")


@dataclass(frozen=True)
class Kind:
    """One job kind as its report shows it."""

    name: str
    title: str
    #: the factors of an arm (``--arm`` overrides)
    arms: tuple[str, ...] = ARM
    #: the trials of an arm are seeds of one setting: spread, intervals and tests apply, one seed is a gap
    replicated: bool = True
    sections: tuple[str, ...] = SEARCH_SECTIONS
    #: what one row of the trials table is
    unit: str = "trial"


KINDS = {
    "ablation": Kind("ablation", "Ablation report"),
    "joint_search": Kind("joint_search", "Joint search report"),
    "study": Kind("study", "Study report", arms=("arm",)),
    "hparam_search": Kind("hparam_search", "Hyperparameter search report", arms=(), replicated=False,
                          sections=("configs", "search", "genotypes"), unit="sampled configuration"),
    "retrain": Kind("retrain", "Retrain report", arms=("genotype_label",), replicated=False,
                    sections=("arms", "retrain", "genotypes"), unit="retrained genotype"),
    "transfer": Kind("transfer", "Transfer report", arms=("task", "cell"), sections=("arms", "comparisons", "transfer"),
                     unit="tagger run"),
}
#: a frame of no single known kind
GENERIC = Kind("", "Report")


def job_name(frame: pd.DataFrame) -> str | None:
    """The job kind of a frame's runs: the source's (the parent runs'), else the one ``job`` its runs share."""
    job = (frame.attrs.get("source") or {}).get("job")
    if job:
        return str(job)
    if "job" in frame:
        jobs = {str(j) for j in frame["job"].dropna() if str(j)}
        if len(jobs) == 1:
            return jobs.pop()
    return None


def job_kind(frame: pd.DataFrame) -> Kind:
    """The :class:`Kind` of a frame's job (:data:`GENERIC` for an unknown or mixed one)."""
    return KINDS.get(job_name(frame) or "", GENERIC)


__all__ = ["GENERIC", "KINDS", "Kind", "job_kind", "job_name"]
