"""analysis.pilot: the main study's seeds, retrain budget and random search's k, read off a pilot by fixed rules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import pilot
from analysis.stats import detectable_effect, seeds_for_power
from analysis.study_data import Cost, StudyData
from ess.adapters.ray.config import job_base, parse_job_args
from ess.adapters.ray.grid import transfer_variants
from ess.errors import ConfigError

# log test ppl of three search arms, 4 seeds each
LOGS = {"intra": [6.00, 6.04, 5.96, 6.00], "joint": [5.90, 5.95, 5.85, 5.90], "rsws": [5.92, 5.92, 5.88, 5.96]}
SEARCH_S = {"intra": 1200.0, "joint": 1500.0, "rsws": 2100.0}
RETRAIN_S = 300.0


def _data(tau: float | None = 0.8, busy_hours: float = 1.0, trial_minutes: float = 120.0) -> StudyData:
    trials = [{"arm": arm, "kind": "search", "seed": s + 1, "retrain_test_ppl": math.exp(v),
               "search_seconds": SEARCH_S[arm], "retrain_seconds": RETRAIN_S}
              for arm, values in LOGS.items() for s, v in enumerate(values)]
    summary = {"name": "pilot-x", "job": "study", "trials": trials,
               "tau": {"short_epochs": 1, "long_epochs": 4,
                       **({"short_vs_long": {"tau": tau, "interval": [tau - 0.3, min(1.0, tau + 0.1)], "n": 8}}
                          if tau is not None else {})}}
    return StudyData(summary, pd.DataFrame(), pd.DataFrame(),
                     Cost(len(trials), {"search": trial_minutes}, busy_hours), {})


def _sd() -> float:
    return math.sqrt(np.mean([np.var(v, ddof=1) for v in LOGS.values()]))


def test_the_seeds_come_from_the_pooled_noise_at_holms_first_step():
    decision = pilot.decide(_data(), pilot.Rules(budget_hours=1e6, max_seeds=10_000))
    sd = _sd()
    assert decision.pooled_log_sd == pytest.approx(sd)
    assert decision.dof == 9
    assert decision.seeds_for_target == seeds_for_power(-math.log(0.97) / sd, 0.05 / 3, 0.8)
    assert decision.fits and decision.seeds == decision.seeds_for_target


def test_a_study_over_budget_runs_the_seeds_that_fit_and_states_what_they_detect():
    rules = pilot.Rules(budget_hours=10.0, fixed_hours=1.0)
    decision = pilot.decide(_data(), rules)
    # by hand: per seed the primary arms cost intra 1500 + joint 1800 + rsws 2400 + random (5 screens + 1) 1800
    # trial-seconds, the exploratory arms (first 4 seeds) inter 1800 + lstm 300 + darts_v2 300; 2 slots, packing 1
    def hours(n):
        return (7500 * n + 2400 * min(n, 4)) / 2 / 3600 + 1.0

    assert decision.packing == pytest.approx(1.0)
    assert not decision.fits
    assert decision.seeds == 7 and hours(7) <= 10.0 < hours(8)
    assert decision.hours == pytest.approx(hours(7))
    expected = 1 - math.exp(-detectable_effect(decision.seeds, 0.05 / 3) * _sd())
    assert decision.detectable_gain == pytest.approx(expected)
    assert f"{decision.seeds} fit the budget and detect a {100 * expected:.1f}% gain" in "\n".join(decision.lines())


def test_idle_slots_in_the_pilot_lengthen_the_estimate():
    tight, loose = (pilot.decide(_data(trial_minutes=m), pilot.Rules(budget_hours=1e6, max_seeds=10_000))
                    for m in (120.0, 60.0))
    assert loose.packing == pytest.approx(0.5)
    assert loose.hours - 1.5 == pytest.approx(2 * (tight.hours - 1.5))


def test_the_seconds_per_seed_of_each_arm():
    decision = pilot.decide(_data(), pilot.Rules(budget_hours=1e6, max_seeds=10_000))
    s = decision.seed_trial_seconds
    assert decision.random_k == 5                                   # 1500 s of joint search / 300 s a screen
    assert s["intra"] == 1500.0 and s["joint"] == 1800.0
    assert s["inter"] == s["joint"]                                 # the pilot ran no inter arm: joint stands in
    assert s["rsws"] == 2400.0
    assert s["random"] == 5 * 300.0 + 300.0
    assert s["lstm"] == s["darts_v2"] == 300.0


@pytest.mark.parametrize("tau, epochs", [(0.8, 1), (0.6, 1), (0.4, 2), (None, 2)])
def test_a_short_retrain_that_does_not_rank_as_the_long_one_doubles_the_retrain(tau, epochs):
    decision = pilot.decide(_data(tau), pilot.Rules(budget_hours=1e6, max_seeds=10_000))
    assert decision.retrain_epochs == epochs
    assert decision.seed_trial_seconds["lstm"] == 300.0 * epochs
    assert decision.seed_trial_seconds["intra"] == 1200.0 + 300.0 * epochs
    assert decision.random_k == 5                                    # the screen stays at random_epochs


def test_a_pilot_without_the_stages_the_rules_need_is_one_line():
    data = _data()
    no_tau = StudyData({**data.summary, "tau": {}}, data.trials, data.epochs, data.cost, {})
    with pytest.raises(ConfigError, match="tau: no tau stage"):
        pilot.decide(no_tau)
    one_seed = StudyData({**data.summary, "trials": [t for t in data.summary["trials"] if t["seed"] == 1]},
                         data.trials, data.epochs, data.cost, {})
    with pytest.raises(ConfigError, match="two seeds of an arm"):
        pilot.decide(one_seed)
    with pytest.raises(ConfigError, match="reaches the study's first seed 3"):
        pilot.decide(data, pilot.Rules(first_seed=3))


def test_the_study_file_is_the_study_jobs_config(tmp_path):
    rules = pilot.Rules(budget_hours=10.0, fixed_hours=1.0)
    decision = pilot.decide(_data(0.4), rules)
    path = tmp_path / "study.yaml"
    path.write_text(pilot.study_file(decision, rules, "python -m analysis.pilot --data X"))
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any("python -m analysis.pilot --data X" in line for line in header)
    assert yaml.safe_load(path.read_text())["design"]["noise_sd"] == pytest.approx(decision.pooled_log_sd, abs=1e-5)
    cfg, _ = parse_job_args("study", ["--config", str(path), "--name", "s"])
    assert cfg.seeds == tuple(range(101, 101 + decision.seeds))          # never a pilot seed: those were looked at
    assert cfg.arms == pilot.MAIN_ARMS and cfg.stages == pilot.MAIN_STAGES
    assert cfg.exploratory_seeds == 4 and cfg.arm_seeds("inter") == (101, 102, 103, 104)
    assert cfg.arm_seeds("rsws") == cfg.seeds
    assert cfg.transfer_seeds == (101, 102, 103)                       # the exploratory transfer: 3 seeds
    assert len(transfer_variants(cfg, ("lstm", "joint", "intra"))) == 9
    assert cfg.random_k == 5 and cfg.design.noise_sd == pytest.approx(decision.pooled_log_sd, abs=1e-5)
    the_pilot = job_base("study", "study-pilot")
    assert cfg.search == the_pilot.search                            # the searches the pilot measured
    assert cfg.train.epochs == 2
    assert cfg.train == the_pilot.train.__class__(**{**the_pilot.train.__dict__, "epochs": 2})


def test_the_committed_rows_decide_the_same(tmp_path):
    from analysis.study_data import read_data, write_data

    data = _data(0.7)
    again = read_data(write_data(data, tmp_path / "data"))
    assert pilot.decide(again) == pilot.decide(data)
    assert pilot.main(["--data", str(tmp_path / "data"), "--write", str(tmp_path / "s.yaml")]) == 0
    assert "--data" in (tmp_path / "s.yaml").read_text().splitlines()[1]


def test_a_pilot_at_the_papers_scale_writes_a_study_at_that_scale(tmp_path):
    from analysis.study_data import write_data

    folder = write_data(_data(0.7), tmp_path / "data")
    path = tmp_path / "gpu.yaml"
    assert pilot.main(["--data", str(folder), "--write", str(path), "--slots", "8", "--budget-hours", "72",
                       "--search-preset", "paper", "--train-preset", "paper", "--match-params", "DARTS_V2@850",
                       "--transfer-preset", "full", "--cpus-per-trial", "4", "--gpus-per-trial", "1"]) == 0
    assert "on 8 trial slots" in path.read_text().splitlines()[0]
    cfg, _ = parse_job_args("study", ["--config", str(path), "--name", "g"])
    gpu = job_base("study", "study-gpu")
    assert cfg.search == gpu.search and cfg.transfer == gpu.transfer
    assert cfg.train.match_params == "DARTS_V2@850" and cfg.train.emsize == gpu.train.emsize
    assert (cfg.cpus_per_trial, cfg.gpus_per_trial) == (4.0, 1.0)


def test_the_tau_stage_as_the_study_job_writes_it_decides():
    from ess.search.evidence import rank_agreement

    data = _data()
    short, long = [1, 2, 3, 4, 5, 6, 8, 7], [1, 2, 3, 4, 5, 6, 7, 8]   # one discordant pair of 28
    agreement = rank_agreement(short, long).to_dict()
    summary = {**data.summary, "tau": {**data.summary["tau"], "short_vs_long": agreement}}
    decision = pilot.decide(StudyData(summary, data.trials, data.epochs, data.cost, {}))
    assert decision.retrain_epochs == 1 and decision.tau_short_long["tau"] == pytest.approx(26 / 28)
    lo, hi = agreement["interval"]
    assert f"Kendall tau 0.93 [{lo:.2f}, {hi:.2f}], n = 8" in "\n".join(decision.lines())
