"""The study's checks of its own instruments: stage ``tau`` (ranking quality), stage ``planted`` (known truth).

``tau``: ``tau_genotypes`` random joint genotypes retrained at the study's budget and ``tau_factor`` times longer
(one seed), and scored on their paths through every joint-space supernet the search stage trained: Kendall's
tau-b of the short against the long retrain (is the proxy budget valid?) and of each supernet's shared-weight
loss against the long retrain (does the supernet rank architectures?), docs/method.md section 11.

``planted``: the search arms of ``planted_arms`` on each planted corpus of ``planted_k`` (the next token depends on
``x_{t-k}``, method section 9) over ``planted_seeds``, each genotype retrained at the study's parameter count,
with ``lstm`` and ``darts_v2`` retrained as controls: the distance of the test perplexity to the corpus's exact
floor in nats, against the count model ``P(x_t | x_{t-k})``, and how often the derived input cell reads the
planted input (its recovery rate; out of reach for k = 4 at m = 3, a control). Each row carries the searched space,
from which the analysis draws the random genotypes its statistics are held against.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ess.adapters.ray import jobs
from ess.adapters.ray.config import PLANTED_CORPORA, JobConfig
from ess.adapters.ray.experiment import Experiment
from ess.adapters.ray.trainables import retrain_trainable, search_trainable
from ess.adapters.ray.trial import RETRAIN_METRIC
from ess.data.generated import ensure_generated
from ess.data.planted import reaches_planted_input
from ess.search import load_search
from ess.search.evidence import rank_agreement
from ess.search.ranking import path_losses
from ess.space.description import describe
from ess.space.refs import load_genotype
from ess.space.sample import random_genotypes
from ess.study import ARMS
from ess.supernet import MODES

Stage = Callable[..., list[dict[str, Any]]]   # tune_stage(exp, name, trainable, spec, variants, callbacks)

#: the seed of the tau stage's genotypes (the random arm draws with the study's seeds, 1, 2, ...)
TAU_SEED = 0


def tau_stage(exp: Experiment, job: JobConfig, searches: Sequence[dict[str, Any]], tune_stage: Stage,
              callbacks: Sequence[Any]) -> dict[str, Any]:
    """Ranking quality: the tau genotypes' short and long retrains, and their shared-weight losses on the paths of
    every joint-space supernet among ``searches`` (the search stage's rows)."""
    space = {k: getattr(job.search, k) for k in ("steps", "m", "n_inter", "intra_ops", "inter_ops")}
    genotypes = {f"tau_{i}": g for i, g in enumerate(random_genotypes(TAU_SEED, job.tau_genotypes, **space))}
    labels = list(genotypes)
    seed = job.seeds[0]
    budgets = {"short": job.train, "long": dataclasses.replace(job.train, epochs=job.train.epochs * job.tau_factor)}
    ppl: dict[str, list[float]] = {}
    for name, train in budgets.items():
        rows = tune_stage(exp, f"tau-{name}", retrain_trainable, exp.spec(train=train, genotypes=genotypes),
                          [{"genotype_label": g, "arm": f"tau-{name}", "seed": seed} for g in labels], callbacks)
        by_label = {r["variant"]["genotype_label"]: r["metrics"].get(RETRAIN_METRIC) for r in rows}
        ppl[name] = [jobs.finite(by_label.get(g)) for g in labels]
    out: dict[str, Any] = {"genotypes": [describe(genotypes[g]) for g in labels], "seed": seed,
                           "short_epochs": budgets["short"].epochs, "long_epochs": budgets["long"].epochs,
                           "short_valid_ppl": ppl["short"], "long_valid_ppl": ppl["long"], "supernets": []}
    if all(math.isfinite(v) for v in ppl["short"] + ppl["long"]):
        out["short_vs_long"] = rank_agreement(ppl["short"], ppl["long"]).to_dict()
    for s in searches:
        if ARMS[s["arm"]].mode != "joint" or not s.get("checkpoint"):
            continue
        run = load_search(Path(s["checkpoint"], "search"))
        losses = path_losses(run.model, [genotypes[g] for g in labels], run.valid_source(run.cfg.rank_tokens),
                             run.cfg.bptt)
        entry = {"arm": s["arm"], "seed": s["seed"], "losses": losses}
        if all(math.isfinite(v) for v in ppl["long"]):
            entry["vs_long"] = rank_agreement(losses, ppl["long"]).to_dict()
        out["supernets"].append(entry)
    return out


def planted_stage(exp: Experiment, job: JobConfig, tune_stage: Stage, callbacks: Sequence[Any]) -> list[dict[str, Any]]:
    """Known truth: per planted corpus, the search arms and the retrained controls over ``planted_seeds``."""
    arms = [ARMS[a] for a in job.planted_arms]
    out = []
    for k in job.planted_k:
        corpus = PLANTED_CORPORA[k]
        _, manifest = ensure_generated(corpus)
        known = {"k": k, "corpus": corpus, "floor_ppl": manifest["floor_ppl"], "entropy_nats": manifest["entropy_nats"],
                 "count_model_ppl": manifest["test"]["skipgram_ppl"], "m": job.search.m, "n_inter": job.search.n_inter,
                 "steps": job.search.steps, "intra_ops": list(job.search.intra_ops),
                 "inter_ops": list(job.search.inter_ops)}
        search = dataclasses.replace(job.search, dataset=corpus)
        train = dataclasses.replace(job.train, dataset=corpus)
        # run names and tags say planted-k<k>-<arm>: never mixed into the study's own arms
        variants = [{"label": f"planted-k{k}-{a.name}", "arm": f"planted-k{k}-{a.name}", "mode": a.mode, "seed": s,
                     **a.search} for a in arms if a.kind == "search" for s in job.planted_seeds]
        if variants:
            for r in tune_stage(exp, f"planted-k{k}", search_trainable,
                                exp.spec(search=search, train=train, retrain_seed="search"), variants, callbacks):
                genotype = load_genotype(r["metrics"]["genotype"])
                reads = reaches_planted_input(genotype, k) if MODES[r["variant"]["mode"]].searches_inter else None
                out.append({**known, **_planted_row(r, r["variant"]["arm"].split("-", 2)[2]),
                            "reaches_planted_input": reads, "genotype": describe(genotype)})
        controls = [a for a in arms if a.kind == "baseline"]
        genotypes = {f"{a.name}_s{s}": "DARTS_V2" if a.cell == "lstm" else a.cell for a in controls
                     for s in job.planted_seeds}
        variants = [{"genotype_label": f"{a.name}_s{s}", "arm": f"planted-k{k}-{a.name}", "seed": s,
                     "cell": "lstm" if a.cell == "lstm" else "ess"} for a in controls for s in job.planted_seeds]
        if variants:
            for r in tune_stage(exp, f"planted-k{k}-controls", retrain_trainable,
                                exp.spec(train=train, genotypes=genotypes), variants, callbacks):
                cell = "lstm" if r["variant"]["cell"] == "lstm" else "DARTS_V2"
                out.append({**known, **_planted_row(r, r["variant"]["arm"].split("-", 2)[2]),
                            "reaches_planted_input": None, "genotype": cell})
    return out


def _planted_row(r: dict[str, Any], arm: str) -> dict[str, Any]:
    m = r["metrics"]
    return {"arm": arm, "seed": r["variant"]["seed"], "retrain_valid_ppl": m.get(RETRAIN_METRIC),
            "retrain_test_ppl": m.get("retrain/test/ppl"), "params": m.get("retrain/params")}


__all__ = ["TAU_SEED", "planted_stage", "tau_stage"]
