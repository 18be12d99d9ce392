"""analysis/: loading MLflow and Ray Tune runs, per-arm statistics checked against hand computation.

The MLflow store is a real SQLite store filled through ess.adapters.mlflow's own functions (parent run,
nested trial runs, per-epoch metrics with step = epoch, genotype artifacts, config tags and params),
shaped the way the Tune trainables (ess.adapters.ray.trainables) log, with metric values chosen so that
every statistic can be computed by hand below.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")
scipy_stats = pytest.importorskip("scipy.stats")
from mlflow import MlflowClient  # noqa: E402

from analysis import (  # noqa: E402
    AnalysisWarning,
    EmptyExperimentError,
    MissingMetricError,
    UnknownExperimentError,
    aggregate,
    compare_arms,
    epoch_curves,
    evolution,
    load_mlflow,
    load_ray_results,
    op_frequencies,
    predecessor_frequencies,
    rank_genotypes,
    trial_summary,
)
from analysis.errors import AnalysisError  # noqa: E402
from analysis.stats import bootstrap_test, cohens_d, hedges_g, holm, welch_t_test  # noqa: E402
from ess.adapters.mlflow import (  # noqa: E402
    PHASE_TAG,
    config_tags,
    flat_params,
    get_or_create_experiment,
    start_parent_run,
    trial_run,
)
from ess.errors import ESSError  # noqa: E402
from ess.space.derive import identity_share  # noqa: E402
from ess.space.genotype import ESSGenotype, InterGenotype, IntraGenotype  # noqa: E402

EXPERIMENT = "ess-ablation"
TUNE_NAME = "abl-test"

INTRA_A = ESSGenotype(IntraGenotype([("relu", 0), ("tanh", 1), ("relu", 1)], (1, 2, 3)))
INTRA_B = ESSGenotype(IntraGenotype([("relu", 0), ("relu", 1), ("relu", 2)], (1, 2, 3)))
JOINT = ESSGenotype(IntraGenotype([("identity", 0), ("tanh", 1), ("relu", 2)], (1, 2, 3)),
                    history=InterGenotype(m=2, nodes=((("tanh", 0), ("identity", 1)),)),
                    input=InterGenotype(m=2, nodes=((("sigmoid", 0), ("relu", 1)),)))

# (mode, seed) -> final search valid ppl, retrained test ppl, genotype; epoch 1 is final + 50
TRIALS = {
    ("intra", 1): (120.0, 80.0, INTRA_A),
    ("intra", 2): (110.0, 84.0, INTRA_A),
    ("intra", 3): (100.0, 88.0, INTRA_B),
    ("joint", 1): (90.0, 70.0, JOINT),
    ("joint", 2): (96.0, 71.0, JOINT),
    ("joint", 3): (93.0, 75.0, JOINT),
}


def log_trial(uri, experiment_id, parent, trial_id, *, mode, seed, valid, test=None, genotype=INTRA_A,
              status="FINISHED", tune_name=TUNE_NAME, metrics=True):
    """One trial run as the driver shows a search_trainable trial (search, then retrain when ``test``)."""
    from mlflow.entities import Metric, Param

    client, now = MlflowClient(uri), int(time.time() * 1000)
    search = {"mode": mode, "seed": seed, "steps": 3, "n_inter": 2, "m": 2, "dataset": "ptb", "lr": 20.0,
              "epochs": len(valid)}
    label = f"{mode}_s{seed}_n3-2-2"
    tags = {PHASE_TAG: "search+retrain", "job": "ablation", "ray.trial_name": f"{label}_{trial_id}",
            "ray.experiment": tune_name, **config_tags(search)}
    params = {**flat_params(search, "search."), **flat_params({"epochs": 1, "lr": 20.0}, "retrain.")}
    run_id, _ = trial_run(uri, parent, trial_id, run_name=label, tags=tags)
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])

    def log(row, step):
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in row.items()])

    for epoch, value in enumerate(valid, start=1) if metrics else ():
        log({"epoch": epoch, "train/loss": 5.0, "train/seconds": 1.5, "train/tokens_per_s": 1000.0,
             "valid/ppl": value, "valid/best_ppl": min(valid[:epoch]), "arch/entropy": 1.6 - 0.1 * epoch,
             "genotype/identity_share": identity_share(genotype)}, epoch)
        client.log_dict(run_id, genotype.to_dict(), f"genotypes/epoch_{epoch:03d}.json")
    if metrics:
        client.set_tag(run_id, "ess.genotype", genotype.to_json(None))
    if test is not None:   # each (key, step) once: the epoch row, then what only the final row adds
        log({"retrain/epoch": 1, "retrain/valid/ppl": test + 5, "retrain/valid/best_ppl": test + 5}, 1)
        log({"retrain/test/ppl": test, "retrain/params": 1000 + seed}, 1)
    client.set_terminated(run_id, status)
    return run_id


def build_store(root: Path) -> str:
    """The SQLite store: experiment ess-ablation with Tune experiments abl-test (6 trials) and abl-other
    (1 trial); ess-broken (runs missing metrics); ess-empty (no runs)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    exp_id = get_or_create_experiment(uri, EXPERIMENT)
    parent = start_parent_run(uri, EXPERIMENT, TUNE_NAME, tags={"job": "ablation"})
    for i, ((mode, seed), (final, test, genotype)) in enumerate(TRIALS.items()):
        log_trial(uri, exp_id, parent, f"t_{i:05d}", mode=mode, seed=seed, valid=[final + 50, final], test=test,
                  genotype=genotype)
    MlflowClient(uri).set_terminated(parent, "FINISHED")
    other = start_parent_run(uri, EXPERIMENT, "abl-other", tags={"job": "ablation"})
    log_trial(uri, exp_id, other, "o_00000", mode="inter", seed=1, valid=[300.0, 200.0], test=150.0,
              tune_name="abl-other")
    MlflowClient(uri).set_terminated(other, "FINISHED")
    broken_id = get_or_create_experiment(uri, "ess-broken")
    broken = start_parent_run(uri, "ess-broken", "broken", tags={"job": "ablation"})
    log_trial(uri, broken_id, broken, "b_00000", mode="intra", seed=1, valid=[150.0, 140.0], test=100.0)
    log_trial(uri, broken_id, broken, "b_00001", mode="intra", seed=2, valid=[160.0, 130.0], test=None)
    log_trial(uri, broken_id, broken, "b_00002", mode="joint", seed=1, valid=[1.0], metrics=False, status="FAILED")
    MlflowClient(uri).set_terminated(broken, "FINISHED")
    get_or_create_experiment(uri, "ess-empty")
    return uri


def shared_store(tmp_path_factory) -> str:
    """The store of :func:`build_store`, built once per test session (the report tests use it too)."""
    root = tmp_path_factory.getbasetemp() / "analysis-mlflow-store"
    done = root / "complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        build_store(root)
        done.write_text("ok\n")
    return f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def runs(store):
    return load_mlflow(TUNE_NAME, store)


@pytest.fixture(scope="module")
def trials(runs):
    return trial_summary(runs)


def by_hand(values):
    """n, mean, sample standard deviation and the 95% t interval, written out."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = scipy_stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    return n, mean, std, mean - half, mean + half


# --------------------------------------------------------------------------------------------------
# Loading


def test_flat_frame_has_one_row_per_trial_stage_and_epoch(runs):
    assert runs["run_id"].nunique() == 6
    assert len(runs) == 6 * 3   # two search epochs and one retrain epoch each
    assert set(runs["stage"]) == {"search", "retrain"}
    search = runs[runs["stage"] == "search"]
    assert sorted(search["epoch"].unique()) == [1, 2]
    for col in ("experiment", "parent", "run_name", "trial_id", "status", "mode", "seed", "steps", "n_inter", "m",
                "valid/ppl", "arch/entropy", "genotype/identity_share", "retrain/test/ppl", "genotype",
                "config.search.lr", "config.retrain.epochs"):
        assert col in runs.columns, col
    assert set(runs["experiment"]) == {EXPERIMENT} and set(runs["parent"]) == {TUNE_NAME}
    assert runs["seed"].dtype.kind in "iu" or str(runs["seed"].dtype) == "Int64"
    assert not any(c.startswith("system/") for c in runs.columns)
    row = search[(search["mode"] == "joint") & (search["seed"] == 2) & (search["epoch"] == 1)].iloc[0]
    assert row["valid/ppl"] == 146.0
    assert json.loads(row["genotype"]) == JOINT.to_dict()
    assert row["config.search.lr"] == 20.0


def test_trial_summary_holds_final_best_test_and_time(trials):
    assert len(trials) == 6
    row = trials[(trials["mode"] == "intra") & (trials["seed"] == 3)].iloc[0]
    assert row["final_valid_ppl"] == 100.0 and row["best_valid_ppl"] == 100.0
    assert row["test_ppl"] == 88.0 and row["retrain_valid_ppl"] == 93.0
    assert row["params"] == 1003 and row["epochs"] == 2
    assert row["search_seconds"] == pytest.approx(3.0)
    assert row["final_arch_entropy"] == pytest.approx(1.4)
    assert json.loads(row["genotype"]) == INTRA_B.to_dict()
    assert row["wall_seconds"] >= 0


def test_mlflow_experiment_name_parent_filter_and_tune_name_agree(store, runs):
    everything = load_mlflow(EXPERIMENT, store)
    assert everything["run_id"].nunique() == 7
    assert set(everything["parent"]) == {TUNE_NAME, "abl-other"}
    one = load_mlflow(EXPERIMENT, store, parent=TUNE_NAME)
    assert set(one["run_id"]) == set(runs["run_id"])
    fast = load_mlflow(TUNE_NAME, store, genotypes=False)
    assert fast["genotype"].isna().all() or set(fast["genotype"].dropna()) <= set(runs["genotype"].dropna())
    assert set(fast["final_genotype"]) == set(runs["final_genotype"])


def test_artifacts_are_downloaded_when_the_store_is_not_local(store, monkeypatch, runs):
    import analysis.mlflow_store as store_reader

    monkeypatch.setattr(store_reader, "_local_artifact_dir", lambda run: None)
    remote = load_mlflow(TUNE_NAME, store)
    pd.testing.assert_series_equal(remote["genotype"], runs["genotype"])


def test_unknown_experiment_lists_the_known_ones(store):
    with pytest.raises(UnknownExperimentError) as err:
        load_mlflow("no-such-experiment", store)
    text = str(err.value)
    assert "no-such-experiment" in text and EXPERIMENT in text and TUNE_NAME in text and "\n" not in text
    with pytest.raises(UnknownExperimentError, match="abl-test"):
        load_mlflow(EXPERIMENT, store, parent="nope")


def test_empty_experiment_and_missing_store_are_one_line_errors(store, tmp_path):
    with pytest.raises(EmptyExperimentError, match="ess-empty.*no trial runs"):
        load_mlflow("ess-empty", store)
    db = tmp_path / "none" / "mlflow.db"
    with pytest.raises(UnknownExperimentError, match="no MLflow database"):
        load_mlflow(EXPERIMENT, f"sqlite:///{db}")
    assert not db.exists()   # looking did not create an empty store
    assert issubclass(UnknownExperimentError, ESSError)


# --------------------------------------------------------------------------------------------------
# Statistics against hand computation


@pytest.mark.parametrize("metric, index", [("final_valid_ppl", 0), ("test_ppl", 1)])
def test_aggregate_equals_hand_computation(trials, metric, index):
    table = aggregate(trials, metric).set_index("mode")
    assert list(table.index) == ["intra", "joint"]
    for mode in ("intra", "joint"):
        values = [v[index] for (m, _), v in TRIALS.items() if m == mode]
        n, mean, std, lo, hi = by_hand(values)
        row = table.loc[mode]
        assert row["n"] == n == 3
        assert row["mean"] == pytest.approx(mean, rel=1e-12)
        assert row["std"] == pytest.approx(std, rel=1e-12)
        assert row["ci_low"] == pytest.approx(lo, rel=1e-12) and row["ci_high"] == pytest.approx(hi, rel=1e-12)
        assert row["seeds"] == "1,2,3"
    if metric == "final_valid_ppl":
        assert table.loc["intra", "mean"] == 110.0 and table.loc["intra", "std"] == 10.0   # (120, 110, 100)
    assert table.loc["joint", "arm"] == "joint"   # node counts do not vary: the arm is named by its mode


def test_welch_t_test_equals_hand_computation(trials):
    a = [v[1] for (m, _), v in TRIALS.items() if m == "intra"]   # 80, 84, 88
    b = [v[1] for (m, _), v in TRIALS.items() if m == "joint"]   # 70, 71, 75
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    t = (ma - mb) / math.sqrt(va / na + vb / nb)
    df = (va / na + vb / nb) ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    p = 2 * scipy_stats.t.sf(abs(t), df)
    assert (ma, mb, va, vb) == (84.0, 72.0, 16.0, 7.0)
    assert df == pytest.approx(1058 / 305)   # (23/3)^2 / ((16/3)^2/2 + (7/3)^2/2)

    table = compare_arms(trials, "test_ppl")
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["arm_a"], row["arm_b"], row["n_a"], row["n_b"]) == ("intra", "joint", 3, 3)
    assert row["diff"] == pytest.approx(12.0)
    assert row["t"] == pytest.approx(t, rel=1e-12)
    assert row["df"] == pytest.approx(df, rel=1e-12)
    assert row["p_value"] == pytest.approx(p, rel=1e-10)
    assert row["p_holm"] == pytest.approx(p, rel=1e-10)   # one pair: nothing to adjust
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(va / na + vb / nb)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(12 - half), pytest.approx(12 + half))
    pooled = math.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
    assert row["cohens_d"] == pytest.approx(12 / pooled)
    assert row["hedges_g"] == pytest.approx(12 / pooled * (1 - 3 / (4 * 6 - 9)))
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)   # and scipy agrees
    assert row["p_value"] == pytest.approx(reference.pvalue, rel=1e-10)


def test_small_samples_give_nan_not_errors():
    assert math.isnan(welch_t_test([1.0], [2.0, 3.0])["p_value"])
    assert math.isnan(welch_t_test([1.0, 1.0], [2.0, 2.0])["t"])   # no spread at all
    assert math.isnan(cohens_d([1.0], [1.0, 2.0])) and math.isnan(hedges_g([1.0], [1.0, 2.0]))


def test_bootstrap_test_is_seeded_and_sensible():
    rng = np.random.default_rng(1)
    a, b = rng.normal(10, 1, 12), rng.normal(12, 1, 12)
    first = bootstrap_test(a, b, n_boot=4000, seed=3)
    assert first == bootstrap_test(a, b, n_boot=4000, seed=3)
    assert first["p_value"] < 0.01 and first["ci_high"] < 0
    same = bootstrap_test(a, a + rng.normal(0, 0.01, 12), n_boot=2000, seed=0)
    assert same["p_value"] > 0.5 and same["ci_low"] < 0 < same["ci_high"]


def test_compare_arms_by_bootstrap_and_holm(trials):
    table = compare_arms(trials, "test_ppl", method="bootstrap", n_boot=2000)
    assert table.iloc[0]["method"] == "bootstrap" and 0 < table.iloc[0]["p_value"] <= 1
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, math.nan])[1])
    with pytest.raises(AnalysisError, match="unknown test"):
        compare_arms(trials, "test_ppl", method="anova")


def test_genotype_ranking(trials):
    ranking = rank_genotypes(trials, "test_ppl")
    assert list(ranking["n"]) == [3, 2, 1]   # joint (72), INTRA_A (82), INTRA_B (88)
    assert list(ranking["mean"]) == [72.0, 82.0, 88.0]
    assert json.loads(ranking.iloc[0]["genotype"]) == JOINT.to_dict()
    assert ranking.iloc[0]["identity_share"] == pytest.approx(identity_share(JOINT))
    assert ranking.iloc[1]["arms"] == "intra" and ranking.iloc[0]["best"] == 70.0


def test_op_and_predecessor_frequencies_of_searched_parts(trials):
    ops = op_frequencies(trials).set_index(["mode", "part", "op"])
    # intra: INTRA_A twice (relu, tanh, relu) and INTRA_B once (relu x3): 7 relu and 2 tanh of 9 edges
    assert ops.loc[("intra", "intra", "relu"), "count"] == 7
    assert ops.loc[("intra", "intra", "tanh"), "share"] == pytest.approx(2 / 9)
    assert ops.loc[("intra", "intra", "identity"), "count"] == 0
    assert ("intra", "history", "tanh") not in ops.index   # intra mode does not search the inter cells
    assert ops.loc[("joint", "history", "identity"), "share"] == pytest.approx(0.5)
    assert ops.loc[("joint", "input", "sigmoid"), "count"] == 3
    for _, part in ops.reset_index().groupby(["mode", "part"]):
        assert part["share"].sum() == pytest.approx(1.0)
    preds = predecessor_frequencies(trials).set_index(["mode", "part", "node", "pred_name"])
    assert preds.loc[("intra", "intra", "s3", "s1"), "share"] == pytest.approx(2 / 3)
    assert preds.loc[("joint", "history", "s1", "h_{t-2}"), "count"] == 3
    assert preds.loc[("joint", "input", "s1", "x_t"), "share"] == pytest.approx(0.5)


def test_epoch_curves_and_evolution(runs):
    curves = epoch_curves(runs, "valid/ppl").set_index(["mode", "epoch"])
    assert curves.loc[("intra", 1), "mean"] == 160.0 and curves.loc[("intra", 2), "std"] == 10.0
    evo = evolution(runs).set_index(["mode", "metric", "epoch"])
    assert evo.loc[("joint", "arch/entropy", 2), "mean"] == pytest.approx(1.4)
    assert evo.loc[("joint", "genotype/identity_share", 1), "mean"] == pytest.approx(identity_share(JOINT))


# --------------------------------------------------------------------------------------------------
# Missing metrics


def test_runs_missing_a_metric_are_named(store):
    trials = trial_summary(load_mlflow("ess-broken", store))
    assert len(trials) == 3
    with pytest.warns(AnalysisWarning, match=r"'test_ppl' is missing in 2 run\(s\): intra_s2_n3-2-2 .*joint_s1"):
        table = aggregate(trials, "test_ppl", by=("mode",))
    assert table["n"].tolist() == [1]
    with pytest.raises(MissingMetricError, match=r"run intra_s2_n3-2-2 \(\w+\) has no metric 'test_ppl'"):
        aggregate(trials, "test_ppl", by=("mode",), strict=True)
    with pytest.raises(MissingMetricError, match="'no/such': no run has it"):
        aggregate(trials, "no/such")
    failed = trials[trials["status"] == "FAILED"]
    with pytest.raises(MissingMetricError, match="none of the 1 runs"):
        aggregate(failed, "final_valid_ppl")
    with pytest.raises(AnalysisError, match="no column 'width'"):
        aggregate(trials, "final_valid_ppl", by=("mode", "width"))


def test_genotype_tables_skip_runs_without_a_genotype(store):
    trials = trial_summary(load_mlflow("ess-broken", store))
    with pytest.warns(AnalysisWarning, match="no readable final genotype: joint_s1"):
        ops = op_frequencies(trials, by=("mode",))
    assert set(ops["mode"]) == {"intra"}
    lstm = trials.assign(cell=["lstm" if m == "joint" else "" for m in trials["mode"]])   # a study's LSTM baseline
    with warnings.catch_warnings():
        warnings.simplefilter("error", AnalysisWarning)   # an LSTM has no genotype to miss
        assert set(op_frequencies(lstm, by=("mode",))["mode"]) == {"intra"}


# --------------------------------------------------------------------------------------------------
# Ray Tune result folders


def _tune_rows(trial_id, run_id, valid, genotype, test):
    """The rows search_trainable reports: search epochs, retrain epochs (repeating the last search row), final."""
    rows, t = [], 0.0
    for epoch, value in enumerate(valid, start=1):
        t += 2.0
        rows.append({"epoch": epoch, "train/loss": 5.0, "train/seconds": 1.5, "valid/ppl": value,
                     "arch/entropy": 1.6 - 0.1 * epoch, "genotype/identity_share": identity_share(genotype),
                     "genotype": genotype.to_json(None), "phase": "search+retrain", "mlflow_run_id": run_id,
                     "trial_id": trial_id, "training_iteration": epoch, "time_total_s": t, "timestamp": 1000 + t,
                     "done": False})
    carry = {k: v for k, v in rows[-1].items() if k not in ("training_iteration", "time_total_s", "timestamp")}
    rows.append({**carry, "retrain/epoch": 1, "retrain/valid/ppl": test + 5, "retrain/valid/best_ppl": test + 5,
                 "training_iteration": len(valid) + 1, "time_total_s": t + 1, "timestamp": 1001 + t})
    rows.append({**carry, "retrain/epoch": 1, "retrain/valid/best_ppl": test + 5, "retrain/test/ppl": test,
                 "retrain/params": 1000, "final": 1, "training_iteration": len(valid) + 2, "time_total_s": t + 2,
                 "timestamp": 1002 + t})
    return rows


def build_ray_results(root: Path, *, broken_last_line: bool = True) -> Path:
    """``<root>/<job>/ablation/<trial>/`` folders shaped like Tune's (params.json, result.json, state)."""
    job = root / "abl-ray"
    stage = job / "ablation"
    (job).mkdir(parents=True)
    (job / "job.yaml").write_text("job: ablation\nname: abl-ray\nexperiment: ''\n")
    trial_data = []
    for i, ((mode, seed), (final, test, genotype)) in enumerate(TRIALS.items()):
        trial_id = f"abcde_{i:05d}"
        name = f"{mode}_s{seed}_n3-2-2_{trial_id}"
        folder = stage / name
        folder.mkdir(parents=True)
        search = {"mode": "joint", "seed": 3, "steps": 3, "n_inter": 2, "m": 2, "dataset": "ptb", "lr": 20.0}
        config = {"ess": {"job": "ablation", "experiment_name": "abl-ray", "search": search,
                          "train": {"epochs": 1, "lr": 20.0}, "tracking": {"uri": None}},
                  "variant": {"mode": mode, "seed": seed, "steps": 3, "n_inter": 2, "m": 2}}
        (folder / "params.json").write_text(json.dumps(config))
        lines = [json.dumps(r) for r in _tune_rows(trial_id, f"run{i}", [final + 50, final], genotype, test)]
        text = "\n".join(lines) + "\n"
        if broken_last_line and i == 0:
            text += '{"epoch": 3, "valid/p'   # a trial killed while Tune wrote its row
        (folder / "result.json").write_text(text)
        status = "ERROR" if (mode, seed) == ("joint", 3) else "TERMINATED"
        trial_data.append([json.dumps({"trial_id": trial_id, "status": status, "relative_logdir": name}), "{}"])
    (stage / "experiment_state-2025-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}))
    return job


def test_ray_results_load_like_mlflow(tmp_path, trials):
    build_ray_results(tmp_path)
    frame = load_ray_results(tmp_path, "abl-ray")
    assert frame["run_id"].nunique() == 6 and len(frame) == 18
    assert set(frame["experiment"]) == {"ess-ablation"} and set(frame["parent"]) == {"abl-ray"}
    assert "retrain/epoch" not in frame.columns   # the retrain rows' epoch is the epoch column
    summary = trial_summary(frame)
    assert set(summary["run_name"]) == set(trials["run_name"])
    merged = summary.merge(trials, on=["mode", "seed"], suffixes=("_ray", "_mlflow"))
    for col in ("final_valid_ppl", "best_valid_ppl", "retrain_valid_ppl", "test_ppl", "search_seconds",
                "final_arch_entropy", "genotype"):
        assert (merged[f"{col}_ray"] == merged[f"{col}_mlflow"]).all(), col
    status = summary.set_index(["mode", "seed"])["status"]
    assert status[("joint", 3)] == "FAILED" and status[("intra", 1)] == "FINISHED"
    assert summary.set_index(["mode", "seed"]).loc[("intra", 1), "wall_seconds"] == 6.0
    assert (frame["config.search.seed"].dropna().astype(int).tolist()
            == frame["seed"].astype(int).tolist())   # the variant overrides the search config
    table = aggregate(summary, "test_ppl", by=("mode",)).set_index("mode")
    assert table.loc["intra", "mean"] == 84.0 and table.loc["joint", "std"] == pytest.approx(math.sqrt(7))


def test_ray_results_folder_forms(tmp_path):
    job = build_ray_results(tmp_path)
    for where, name in ((job, None), (job / "ablation", None), (tmp_path, None), (tmp_path, "abl-ray")):
        assert load_ray_results(where, name)["run_id"].nunique() == 6
    csv_only = job / "ablation" / "intra_s1_n3-2-2_abcde_00000"
    rows = [json.loads(line) for line in (csv_only / "result.json").read_text().splitlines()[:2]]
    pd.DataFrame(rows).to_csv(csv_only / "progress.csv", index=False)
    (csv_only / "result.json").unlink()
    frame = load_ray_results(job)
    assert frame[frame["run_name"] == "intra_s1_n3-2-2"]["valid/ppl"].tolist() == [170.0, 120.0]


def test_bad_ray_results_folders_are_one_line_errors(tmp_path):
    with pytest.raises(UnknownExperimentError, match="no such Ray Tune results folder"):
        load_ray_results(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyExperimentError, match="no Ray Tune trial folders"):
        load_ray_results(tmp_path / "empty")
    build_ray_results(tmp_path / "r")
    with pytest.raises(UnknownExperimentError, match="no Tune experiment 'other' .*known: abl-ray"):
        load_ray_results(tmp_path / "r" / "abl-ray", "other")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(AnalysisError, match="not a folder"):
        load_ray_results(tmp_path / "file.txt")


def test_loading_needs_no_ray():
    import subprocess
    import sys

    code = ("import sys; import analysis, analysis.load, analysis.stats, analysis.figures, analysis.report; "
            "assert 'ray' not in sys.modules and 'mlflow' not in sys.modules, "
            "[m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')][:3]")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_summary_of_nothing_is_an_error():
    with pytest.raises(EmptyExperimentError):
        trial_summary(pd.DataFrame())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(aggregate(pd.DataFrame({"mode": ["a"], "seed": [1], "x": [1.0], "run_id": ["r"]}),
                                    "x", by=("mode",), warn_single=False)["std"].iloc[0])


def test_ratio_test_is_welch_on_log_values_by_hand():
    from analysis.stats import ratio_test

    a, b = [math.e ** 1, math.e ** 2, math.e ** 3], [1.0, math.e, math.e ** 2]   # logs 1,2,3 and 0,1,2
    out = ratio_test(a, b)
    se, t = math.sqrt(1 / 3 + 1 / 3), 2.7764451051977987   # t_{0.975, 4}; Welch df = 4 with equal variances
    assert out["ratio"] == pytest.approx(math.e)
    assert out["df"] == pytest.approx(4.0)
    assert out["ci_low"] == pytest.approx(math.exp(1 - t * se))
    assert out["ci_high"] == pytest.approx(math.exp(1 + t * se))
    assert out["p_value"] == pytest.approx(0.2878641347266506, rel=1e-6)
    assert out["diff_geo"] == pytest.approx(math.exp(2) - math.exp(1))
    one = ratio_test([100.0], [90.0, 95.0])
    assert one["ratio"] == pytest.approx(100 / math.sqrt(90 * 95)) and math.isnan(one["ci_low"])


@pytest.mark.parametrize("effect, n", [(1.0, 17), (0.5, 64), (0.8, 26)])   # Cohen (1988), table 2.4.1
def test_seeds_for_power_matches_the_exact_t_tables(effect, n):
    from analysis.stats import detectable_effect, seeds_for_power

    assert seeds_for_power(effect) == n
    assert seeds_for_power(-effect) == n
    assert detectable_effect(n) <= effect < detectable_effect(n - 1)
    assert seeds_for_power(0.0) == 0


def test_primary_analysis_holds_the_designs_pairs_by_hand():
    from analysis.study import primary_analysis
    from ess.study import StudyDesign

    trials = [{"arm": a, "retrain_test_ppl": v} for a, vs in
              (("joint", (100.0, 110.0)), ("intra", (120.0, 130.0)), ("rsws", (90.0, 95.0, 99.0)))
              for v in vs]
    design = StudyDesign(primary=("joint:intra", "joint:rsws", "joint:random"), target_gain=0.03)
    out = primary_analysis(trials, design)
    rows = {(c["arm_a"], c["arm_b"]): c for c in out["comparisons"]}
    assert list(rows) == [("joint", "intra"), ("joint", "rsws"), ("joint", "random")]
    assert rows["joint", "intra"]["ratio"] == pytest.approx(math.sqrt(100 * 110) / math.sqrt(120 * 130))
    assert rows["joint", "rsws"]["ratio"] == pytest.approx(math.sqrt(100 * 110) / (90 * 95 * 99) ** (1 / 3))
    assert rows["joint", "random"]["verdict"].startswith("no comparison")
    # Holm over the two comparisons that exist: the smaller p doubled
    ps = sorted(r["p_value"] for r in rows.values() if r["p_value"] == r["p_value"])
    assert min(r["p_holm"] for r in rows.values() if r["p_holm"] == r["p_holm"]) == pytest.approx(2 * ps[0])
    pw = out["power"]
    logs = {a: np.log([t["retrain_test_ppl"] for t in trials if t["arm"] == a]) for a in ("joint", "intra", "rsws")}
    assert pw["pooled_log_sd"] == pytest.approx(math.sqrt(np.mean([np.var(v, ddof=1) for v in logs.values()])))
    assert pw["seeds_per_arm"] == 0 and pw["alpha_first_step"] == pytest.approx(0.05 / 3)   # random has no seed
    out = primary_analysis(trials, StudyDesign(primary=("joint:intra", "joint:rsws")))
    assert out["power"]["seeds_per_arm"] == 2 and 0 < out["power"]["detectable_gain"] < 1
    assert out["power"]["seeds_for_target"] > 2


@pytest.mark.parametrize("ci, p_holm, n, verdict", [
    ((0.93, 1.12), 0.63, 10, "cannot be told apart"),
    ((1.004, 1.195), 0.124, 10, "cannot be told apart after Holm (unadjusted: joint higher)"),
    ((0.85, 0.97), 0.01, 10, "joint lower"),
    ((1.01, 1.2), 0.04, 10, "joint higher"),
    ((math.nan, math.nan), math.nan, 1, "no comparison: it needs at least two seeds per arm")])
def test_a_primary_verdict_names_a_direction_only_past_holm(ci, p_holm, n, verdict):
    from analysis.study import primary_verdict

    row = {"arm_a": "joint", "n_a": n, "n_b": 10, "ci_low": ci[0], "ci_high": ci[1], "significant": p_holm < 0.05}
    assert primary_verdict(row) == verdict


def test_power_statement_names_the_detectable_gain_or_why_there_is_none():
    from analysis.stats import detectable_effect, seeds_for_power
    from analysis.study import power_statement

    # the pilot's figures (docs/study-design.md): 10 seeds at sd 4.73% detect 7.2%; 3% takes 52 seeds per arm
    # at this rounded sd (53 at the pilot's unrounded one)
    sd, alpha = 0.0473, 0.05 / 3
    gain = 1 - math.exp(-detectable_effect(10, alpha) * sd)
    power = {"seeds_per_arm": 10, "pooled_log_sd": sd, "alpha_first_step": alpha, "detectable_gain": gain,
             "target_gain": 0.03, "seeds_for_target": seeds_for_power(-math.log(0.97) / sd, alpha), "power": 0.8}
    text = power_statement(power)
    assert "With 10 seeds per arm" in text and "(4.7%)" in text and "is 7.2%" in text
    assert "the target 3% takes 52 seeds per arm" in text
    # an arm without two seeds: no gain is stated, and no nan is printed
    text = power_statement({**power, "seeds_per_arm": 0, "detectable_gain": math.nan})
    assert text.startswith("No detectable gain is stated: an arm of the comparisons has 0 seed(s)")
    assert "nan" not in text and "52 seeds per arm" in text


def test_planted_table_recovery_and_distance_to_the_floor_by_hand():
    from analysis.study import planted_table
    from ess.data.planted import planted_lag_edges
    from ess.space.description import describe
    from ess.space.refs import load_genotype
    from ess.space.sample import random_genotypes

    known = {"k": 2, "floor_ppl": math.e, "entropy_nats": 1.0, "count_model_ppl": math.exp(1.5)}
    found = describe(random_genotypes(0, 1, steps=8, m=3, n_inter=3)[0])
    rows = [{**known, "arm": "joint", "seed": 1, "retrain_test_ppl": math.exp(1.2), "reaches_planted_input": True,
             "genotype": found},
            {**known, "arm": "joint", "seed": 2, "retrain_test_ppl": math.exp(1.4), "reaches_planted_input": False,
             "genotype": found},
            {**known, "arm": "lstm", "seed": 1, "retrain_test_ppl": math.exp(1.3), "reaches_planted_input": None}]
    table = {r["arm"]: r for r in planted_table(rows)}
    joint, lstm = table["joint"], table["lstm"]
    assert (joint["n"], joint["recovered"], joint["recovery_rate"]) == (2, 1, 0.5)
    assert joint["gap_nats"] == pytest.approx(0.3) and joint["gap_ci_low"] < 0.3 < joint["gap_ci_high"]
    assert joint["test_ppl_geo_mean"] == pytest.approx(math.exp(1.3))
    assert joint["count_model_gap_nats"] == pytest.approx(0.5)
    assert lstm["recovered"] is None and lstm["gap_nats"] == pytest.approx(0.3)
    # random genotypes of m = 3 inputs and 3 nodes read x_(t-1) with 1 - (2/5)^2 = 0.84; at least 1 of 2 by chance:
    assert joint["chance_rate"] == pytest.approx(0.84) and joint["recovery_p"] == pytest.approx(1 - 0.16 ** 2)
    assert lstm["chance_rate"] is None and lstm["recovery_p"] is None
    hits, lagged = (sum(c) for c in zip(*[planted_lag_edges(load_genotype(found), 2)] * 2))
    assert (joint["lag_edges"], joint["lagged_edges"], joint["lag_chance"]) == (hits, lagged, 0.5)
    assert joint["lag_p"] == pytest.approx(sum(math.comb(lagged, i) for i in range(hits, lagged + 1)) / 2 ** lagged)
    assert lstm["lag_p"] is None
    two = describe(random_genotypes(0, 1, steps=8, m=3, n_inter=2)[0])   # the stage's space says 2 nodes
    given = {r["arm"]: r for r in planted_table([{**r, "n_inter": 2, **({"genotype": two} if "genotype" in r else {})}
                                                 for r in rows])}
    assert given["joint"]["chance_rate"] == pytest.approx(1 - (2 / 4) ** 2)
    # the two seeds derived the same genotype: they agree on every choice, which no random draw of 10,000 reaches
    assert joint["agree"] == 1.0 and joint["agree_null"] < 0.2 and joint["agree_p"] == pytest.approx(1 / 10_001)
    assert lstm["agree"] is None and lstm["agree_p"] is None
    # the random genotypes come from the space the rows name: fewer ops, more agreement by chance
    small = {"intra_ops": ["tanh", "relu", "identity"], "inter_ops": ["tanh", "identity"]}
    cell = describe(random_genotypes(1, 1, steps=8, m=3, n_inter=3, **small)[0])
    own = planted_table([{**r, "genotype": cell, "steps": 8, **small} for r in rows if r["arm"] == "joint"])[0]
    assert own["agree"] == 1.0 and own["agree_null"] > joint["agree_null"]


def test_the_entropy_figure_draws_an_arm_without_architecture_weights_in_its_identity_panel():
    """RSWS has no alpha, so no entropy, but its genotypes have an identity share: that panel shows it."""
    from analysis.figures import entropy_figure

    rows = [{"arm": arm, "seed": seed, "epoch": epoch, "stage": "search", "run_id": f"{arm}{seed}",
             "arch/entropy": 0.9 if arm == "joint" else None, "genotype/identity_share": 0.25 * epoch}
            for arm in ("joint", "rsws") for seed in (1, 2) for epoch in (1, 2)]
    fig = entropy_figure(pd.DataFrame(rows), by=("arm",))
    entropy, identity = fig.axes[:2]
    assert len(entropy.get_lines()) == 1 and len(identity.get_lines()) == 2
    assert entropy.get_lines()[0].get_color() == identity.get_lines()[0].get_color()   # one colour per arm
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["joint (n=2)", "rsws (n=2)"]
