"""results.md's design sections (:mod:`analysis.study_sections`): the evidence table, a pilot's page."""

from __future__ import annotations

import math

import pandas as pd

from analysis.results import render
from analysis.study_data import Cost, StudyData
from analysis.study_sections import evidence_rows
from ess.space.genotype import DARTS_V2, ENAS


def _part(observed, null_mean, p):
    return {"observed": observed, "null_mean": null_mean, "p": p}


EVIDENCE = {"joint": {"searches": 2, "changed_epoch_share": 0.5, "kept_from_middle": 0.875,
                      "statement": "seeds agree on 41% of choices, random genotypes on 24%",
                      "agreement": {"overall": _part(0.41, 0.24, 0.004),
                                    "parts": {"intra": _part(0.5, 0.2, 0.01), "input": _part(0.25, 0.3, 0.7)}}},
            "intra": {"searches": 1, "changed_epoch_share": None, "kept_from_middle": None, "agreement": None,
                      "statement": "1 search: seed agreement needs at least two"}}


def _summary(**extra):
    trials = [{"arm": "joint", "kind": "search", "seed": s, "search_seconds": 60.0 * m, "retrain_seconds": 30.0,
               "retrain_valid_ppl": 100.0 + s, "retrain_test_ppl": 95.0 + s, "genotype": "DARTS_V2"}
              for s, m in ((1, 20), (2, 30))]
    trials.append({"arm": "intra", "kind": "search", "seed": 1, "search_seconds": 600.0, "retrain_seconds": 30.0,
                   "retrain_valid_ppl": 103.0, "retrain_test_ppl": 98.0, "genotype": "DARTS_V2"})
    return {"job": "study", "name": "p", "tracking_uri": "", "mlflow_experiment": "ess-study", "parent_run_id": "0",
            "arms": [], "pairs": {}, "headline": {}, "best": {}, "trials": trials, "evidence": EVIDENCE, **extra}


def test_the_evidence_table_per_arm():
    genotypes = {("joint", 1): DARTS_V2, ("joint", 2): ENAS, ("intra", 1): DARTS_V2}
    joint, intra = evidence_rows(_summary(), genotypes)
    assert joint["arm"] == "joint" and joint["searches"] == 2
    assert joint["agree"] == "41% vs 24%" and joint["p"] == "0.004"
    assert joint["agree_intra"] == "50% vs 20%" and joint["agree_input"] == "25% vs 30%"
    assert joint["agree_history"] == "-"
    assert joint["identity_intra"] == f"{(1 / 8 + 0) / 2:.2f}"        # DARTS_V2 has 1 identity of 8 edges, ENAS none
    assert joint["identity_history"] == "-"                            # not a part the agreement covers
    assert joint["identity_input"] == "-"                              # no input node in either genotype: no edge
    assert joint["changed"] == "50%" and joint["kept"] == "88%" and joint["minutes"] == "25"
    assert intra["agree"] == intra["p"] == intra["changed"] == "-" and intra["minutes"] == "10"
    assert joint["ranking"] == intra["ranking"] == "-"                 # neither ranked genotypes


def test_the_ranking_cost_read_from_the_searches_selection(tmp_path):
    import json

    from analysis.study_data import from_experiment

    summary = _summary()
    for t in summary["trials"]:
        t["checkpoint"] = str(tmp_path / f"{t['arm']}{t['seed']}")
        (tmp_path / f"{t['arm']}{t['seed']}" / "search").mkdir(parents=True)
    for seed, seconds in ((1, 300.0), (2, 340.0)):   # joint ranked 1,001 genotypes; intra chose by argmax
        (tmp_path / f"joint{seed}" / "search" / "selection.json").write_text(json.dumps(
            {"criterion": "rank", "candidates": 1001, "rank_seconds": seconds, "seconds": seconds + 20}))
    (tmp_path / "intra1" / "search" / "selection.json").write_text(json.dumps({"criterion": "argmax"}))
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "summary.json").write_text(json.dumps(summary))
    data = from_experiment(tmp_path / "exp")
    ranked = {(t["arm"], t["seed"]): t.get("rank_seconds") for t in data.summary["trials"]}
    assert ranked == {("joint", 1): 300.0, ("joint", 2): 340.0, ("intra", 1): None}
    joint, intra = evidence_rows(data.summary, {})
    assert joint["ranking"] == "320 s for 1,001" and intra["ranking"] == "-"


def test_a_pilot_page_is_exploratory_and_says_what_it_decides(tmp_path):
    data = StudyData(_summary(), pd.DataFrame(), pd.DataFrame(), Cost(), {})
    text = render(data, tmp_path / "f", "pilot", pilot=True)
    assert text.startswith("# Pilot: p (exploratory)")
    assert "## What the pilot decides for the main study" in text
    assert "no decision: pilot: summary.json: tau: no tau stage" in text
    assert "Design (pre-registered)" not in text
    assert "## Did the searches find something?" in text and "| joint | 2 | 41% vs 24% | 0.004 |" in text
    assert "--data pilot/data --out pilot.md --pilot" in text
    study = render(StudyData(_summary(design={"primary": ["joint:intra"], "metric": "retrain_test_ppl",
                                                "alpha": 0.05, "target_gain": 0.03, "power": 0.8, "noise_sd": 0.0,
                                                "pilot": "", "stopping": "the end"}),
                             pd.DataFrame(), pd.DataFrame(), Cost(), {}), tmp_path / "f", "results")
    assert study.startswith("# Results: p") and "## Design (pre-registered)" in study
    assert "What the pilot decides" not in study and "--pilot" not in study


def test_a_pilot_with_its_stages_decides_on_its_page(tmp_path):
    tau = {"short_epochs": 1, "long_epochs": 4, "seed": 0, "genotypes": ["a"] * 8, "supernets": [],
           "short_vs_long": {"tau": 0.71, "interval": [0.2, 0.92], "n": 8, "statement": "tau 0.71"}}
    summary = _summary(tau=tau)
    summary["trials"] += [{**summary["trials"][0], "arm": "rsws", "seed": s} for s in (1, 2)]
    for t, v in zip(summary["trials"], (0.0, 0.1, 0.05, 0.0, 0.02)):
        t["retrain_test_ppl"] = 100.0 * math.exp(v)
    text = render(StudyData(summary, pd.DataFrame(), pd.DataFrame(), Cost(), {}), tmp_path / "f", "pilot",
                  pilot=True)
    assert "- retrain: 1 epoch(s) (short 1 vs long: Kendall tau 0.71 [0.20, 0.92], n = 8)" in text
    assert "- the study's retrain: tau 0.71" in text
    sd = math.sqrt((0.1 ** 2 / 2 + 0.02 ** 2 / 2) / 2)                  # joint and rsws; intra's one seed has no sd
    assert f"seed sd of log retrain_test_ppl {100 * sd:.2f}% (2 degrees of freedom" in text


def test_the_supernets_rank_in_one_table_sorted_and_a_shared_supernet_is_named(tmp_path):
    from ess.search.evidence import rank_agreement

    long = [250.0, 240.0, 260.0, 255.0, 245.0, 270.0]
    def net(arm, seed, losses):
        return {"arm": arm, "seed": seed, "losses": losses, "vs_long": rank_agreement(losses, long).to_dict()}
    same = [7.1, 7.0, 7.3, 7.2, 6.9, 7.4]   # one pair (6.9, 7.0) in the other order: tau = (14 - 1) / 15
    tau = {"short_epochs": 1, "long_epochs": 4, "seed": 0, "genotypes": ["a"] * 6,
           "supernets": [net("joint-pt", 1, same), net("rsws", 1, [7.0, 6.9, 7.2, 7.1, 6.95, 7.3]),
                         net("joint", 1, same)]}
    text = render(StudyData(_summary(tau=tau), pd.DataFrame(), pd.DataFrame(), Cost(), {}), tmp_path / "f",
                  "pilot", pilot=True)
    section = text[text.index("## Ranking quality"):]
    rows = [line for line in section.splitlines() if line.startswith("| joint") or line.startswith("| rsws")]
    assert [r.split(" | ")[0] for r in rows] == ["| joint", "| joint-pt", "| rsws"]
    assert rows[1].endswith("| joint seed 1 |") and rows[0].endswith("|  |")
    assert "| rsws | 1 | 1.00 |" in rows[2]          # the same order as the long retrain
    assert "median tau per arm: joint 0.87; joint-pt 0.87; rsws 1.00" in section


def _comparison(b, ratio, low, high, p_holm, n=(8, 8)):
    return {"arm_a": "joint", "arm_b": b, "n_a": n[0], "n_b": n[1], "ratio": ratio, "ci_low": low, "ci_high": high,
            "p_value": p_holm / 2, "p_holm": p_holm, "significant": p_holm < 0.05,
            "verdict": "no comparison: it needs at least two seeds per arm" if min(n) < 2 else
            ("cannot be told apart" if low <= 1 <= high else "joint lower" if high < 1 else "joint higher")}


def test_one_paragraph_per_primary_comparison_says_what_its_interval_means():
    from analysis.study_sections import primary_reading

    summary = {"design": {"target_gain": 0.03, "alpha": 0.05},
               "arms": [{"arm": a, "retrain_test_ppl_geo_mean": v} for a, v in
                        (("joint", 300.0), ("intra", 310.0), ("rsws", 301.0), ("random", 330.0), ("lstm", 320.0))],
               "primary": {"metric": "retrain_test_ppl", "comparisons": [
                   _comparison("intra", 0.968, 0.90, 1.04, 0.30),          # wide: holds the 3% target
                   _comparison("rsws", 0.997, 0.98, 1.015, 0.80),          # narrow: excludes 3% either way
                   _comparison("random", 0.909, 0.85, 0.97, 0.01),         # lower, past Holm
                   _comparison("lstm", 0.94, 0.89, 0.995, 0.09),           # lower unadjusted, not past Holm
                   _comparison("inter", 1.0, 1.0, 1.0, 1.0, n=(8, 1))]}}
    intra, rsws, random, lstm, inter = [p for p in primary_reading(summary) if p]
    assert intra.startswith("**joint vs intra** (primary): geometric-mean `retrain_test_ppl` 300.0 vs 310.0; ratio "
                            "0.968, 95% interval [0.900, 1.040] (n = 8 and 8;")
    assert "from 10.0% lower to 4.0% higher than intra's" in intra and "neither shows nor excludes it" in intra
    assert "The interval excludes a 3% difference either way." in rsws
    assert "joint's value is lower than random's by 3.0% to 15.0% (Holm p < 0.05" in random
    assert "lower than lstm's by 0.5% to 11.0%, but Holm over the 5 comparisons gives p = 0.09 >= 0.05" in lstm
    assert inter == "**joint vs inter** (primary): no comparison: it needs at least two seeds per arm (n = 8 and 1)."


def test_the_evidence_table_reads_the_evidence_as_the_study_job_writes_it():
    from ess.search.evidence import arm_evidence
    from ess.space.sample import random_genotypes

    space = dict(steps=4, m=2, n_inter=2, intra_ops=("tanh", "relu", "identity"), inter_ops=("tanh", "identity"))
    genotypes = random_genotypes(7, 3, **space)
    evidence = arm_evidence(genotypes, [None] * 3, ("intra", "history", "input"), draws=200, **space).to_dict()
    summary = {"trials": [{"arm": "joint", "kind": "search", "seed": s, "search_seconds": 60.0} for s in (1, 2, 3)],
               "evidence": {"joint": evidence}}
    (row,) = evidence_rows(summary, {("joint", s + 1): g for s, g in enumerate(genotypes)})
    overall = evidence["agreement"]["overall"]
    assert row["agree"] == f"{overall['observed']:.0%} vs {overall['null_mean']:.0%}" and row["searches"] == 3
    intra = evidence["agreement"]["parts"]["intra"]
    assert row["agree_intra"] == f"{intra['observed']:.0%} vs {intra['null_mean']:.0%}"
    assert row["changed"] == row["kept"] == "-" and row["minutes"] == "1"


DESIGN = {"primary": ["joint:intra", "joint:rsws", "joint:random"], "metric": "retrain_test_ppl", "alpha": 0.05,
          "target_gain": 0.03, "power": 0.8, "noise_sd": 0.0473, "pilot": "study-pilot-1", "stopping": "the end"}


def _job_yaml(tmp_path, **changes):
    import yaml

    job = {"job": "study", "data_dir": str(tmp_path / "data"), "storage_path": str(tmp_path / "tune"),
           "seeds": list(range(101, 111)), "exploratory_seeds": 4, "transfer_seeds": [101, 102, 103],
           "stages": ["search", "baselines", "random", "transfer", "wikitext2"], "cpus_per_trial": 1.0,
           "gpus_per_trial": 0.0, "random_k": 4, "random_epochs": 1, "tasks": ["conll2003"],
           "search": {"dataset": "ptb", "epochs": 3, "emsize": 64, "nhid": 64, "batch_size": 32, "bptt": 35,
                      "lr": 10.0, "arch_lr": 0.003, "max_train_tokens": 0, "steps": 8, "n_inter": 3, "m": 3,
                      "rank_samples": 1000, "data_dir": str(tmp_path / "data")},
           "train": {"epochs": 1, "emsize": 128, "nhid": 128, "match_params": "DARTS_V2@128", "batch_size": 32,
                     "max_train_tokens": 0, "valid_part": "select"},
           "transfer": {"epochs": 4}, **changes}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))


def test_the_design_section_states_n_per_arm_and_the_budget_of_every_stage_from_the_job_file(tmp_path):
    import json

    from analysis.study_data import with_budget

    _job_yaml(tmp_path)
    summary = with_budget(_summary(design=DESIGN), tmp_path)
    assert str(tmp_path) not in json.dumps(summary["budget"])   # committed with the rows: no path of this machine
    summary["arms"] = [{"arm": a} for a in ("intra", "inter", "joint", "rsws", "random", "lstm", "darts_v2")]
    text = render(StudyData(summary, pd.DataFrame(), pd.DataFrame(), Cost(), {}), tmp_path / "f", "results")
    assert text.startswith("# Results: p\n\nThe pre-registered study (docs/study-design.md): does the joint arm give "
                           "a better language model than intra, rsws and random, at equal budget")
    assert ("- n per arm (planned): 10 seeds (101-110) for the primary arms (joint, intra, rsws, random); the first 4 "
            "for the exploratory arms (inter, lstm, darts_v2).") in text
    assert ("- Budget of every stage: search: 3 epochs on the whole training set of PTB at 64 units, batch 32, "
            "BPTT 35; rsws ranks 1,000 genotypes by shared-weight loss; retrain: 1 epoch on the whole training set "
            "at the parameter count of DARTS_V2@128, batch 32, epoch chosen on the `select` validation tokens; "
            "random: the best of 4 random genotypes by a retrain of 1 epoch") in text
    assert "transfer (exploratory): conll2003, 4 epochs, seeds 101-103; WikiText-2 (exploratory): the cells of seed " \
           "101 retrained. CPUs per trial: 1; GPUs per trial: 0." in text
    # a summary that holds its budget keeps it; a study without a job file has no budget lines
    assert with_budget({**summary, "budget": {"seeds": [1]}}, tmp_path)["budget"] == {"seeds": [1]}
    assert "budget" not in with_budget(_summary(), tmp_path / "elsewhere")


def test_an_unreadable_job_file_is_a_one_line_error_naming_it(tmp_path):
    import pytest

    from analysis.study_data import with_budget
    from ess.errors import ConfigError

    (tmp_path / "job.yaml").write_text("seeds: [1, 2\n")
    with pytest.raises(ConfigError, match=r"job\.yaml: not valid YAML at line 2"):
        with_budget(_summary(), tmp_path)
    (tmp_path / "job.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"job\.yaml: expected a mapping"):
        with_budget(_summary(), tmp_path)


def test_the_primary_table_gives_a_direction_only_past_holm_whatever_verdict_the_rows_carry(tmp_path):
    # rows as the study job of commit 63e6498 wrote them: its verdict read the unadjusted interval alone
    comparisons = [_comparison("intra", 1.02, 0.93, 1.12, 0.63), _comparison("rsws", 1.096, 1.004, 1.195, 0.124),
                   _comparison("random", 0.909, 0.85, 0.97, 0.01)]
    power = {"seeds_per_arm": 8, "pooled_log_sd": 0.07, "alpha_first_step": 0.05 / 3, "detectable_gain": 0.11,
             "target_gain": 0.03, "seeds_for_target": 113, "power": 0.8}
    summary = _summary(design=DESIGN, primary={"metric": "retrain_test_ppl", "comparisons": comparisons,
                                               "power": power})
    assert summary["primary"]["comparisons"][1]["verdict"] == "joint higher"
    text = render(StudyData(summary, pd.DataFrame(), pd.DataFrame(), Cost(), {}), tmp_path / "f", "results")
    section = text.split("## Primary comparisons")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| joint")]
    assert [r.rsplit(" | ", 1)[1] for r in rows] == [
        "cannot be told apart |", "cannot be told apart after Holm (unadjusted: joint higher) |", "joint lower |"]
