"""analysis.report per job kind on hand-made stores: a joint search's retrains joined to their searches.

The MLflow store is shaped the way the joint search job logs (search runs of phase ``search``, then retrain
runs of phase ``retrain`` tagged ``source.search_run_id``, ``source.seed``, ``source.mode`` and their own
seed); the Ray Tune folders likewise, without MLflow run ids. Values are chosen so the tables can be
checked by hand; the smoke jobs' own reports are checked in tests/adapters/ray.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
scipy_stats = pytest.importorskip("scipy.stats")

from report_helpers import check_intervals, check_real_arms, check_title, job_report  # noqa: E402
from test_analysis import INTRA_A, JOINT  # noqa: E402

from analysis import load_mlflow, trial_summary  # noqa: E402
from analysis.report import write_report  # noqa: E402
from analysis.stats import aggregate, describe_sample, interval_scale  # noqa: E402
from analysis.trials import expected, join_stages  # noqa: E402
from ess.adapters.mlflow import PHASE_TAG, config_tags, get_or_create_experiment, start_parent_run, trial_run  # noqa: E402
from ess.space.derive import identity_share  # noqa: E402

NAME = "js-test"
RETRAIN_SEED = 1267
#: seed -> final search valid ppl (epoch 1: +50), retrained test ppl (None: not among the top_k)
SEARCHES = {1: (90.0, 70.0), 2: (96.0, 74.0), 3: (93.0, None)}


def _log(client, run_id, rows):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    for step, row in rows:
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in row.items()])


def build_joint_store(root: Path) -> str:
    """ess-joint_search with Tune experiments js-test (three searches, the best two retrained in runs of their
    own) and js-failed (two searches, both retrained, one retrain FAILED)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    get_or_create_experiment(uri, "ess-joint_search")
    _joint_experiment(uri, NAME, SEARCHES)
    _joint_experiment(uri, "js-failed", {1: (90.0, 70.0), 2: (96.0, 74.0)}, failed=2)
    return uri


def _joint_experiment(uri: str, name: str, searches: dict, failed: int | None = None) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = start_parent_run(uri, "ess-joint_search", name, tags={"job": "joint_search"})
    for seed, (final, test) in searches.items():
        label = f"joint_s{seed}_n3-2-2"
        genotype = JOINT if seed != 3 else INTRA_A
        search = {"mode": "joint", "seed": seed, "steps": 3, "n_inter": 2, "m": 2, "dataset": "ptb"}
        tags = {PHASE_TAG: "search", "job": "joint_search", "ray.experiment": name, **config_tags(search)}
        run_id, _ = trial_run(uri, parent, f"{name}_s_{seed:05d}", run_name=label, tags=tags)
        _log(client, run_id, [(e, {"valid/ppl": v, "train/seconds": 1.5, "arch/entropy": 1.6 - 0.1 * e,
                                   "genotype/identity_share": identity_share(genotype)})
                              for e, v in ((1, final + 50), (2, final))])
        client.set_tag(run_id, "ess.genotype", genotype.to_json(None))
        client.set_terminated(run_id, "FINISHED")
        if test is None:
            continue
        tags = {PHASE_TAG: "retrain", "job": "joint_search", "ray.experiment": name, "seed": str(RETRAIN_SEED),
                "genotype": label, "source.search_run_id": run_id, "source.seed": str(seed), "source.mode": "joint"}
        retrain_id, _ = trial_run(uri, parent, f"{name}_r_{seed:05d}", run_name=f"retrain_{label}", tags=tags)
        _log(client, retrain_id, [(1, {"retrain/valid/ppl": test + 5, "retrain/valid/best_ppl": test + 5})])
        if seed != failed:
            _log(client, retrain_id, [(1, {"retrain/test/ppl": test, "retrain/params": 1000 + seed})])
        client.set_terminated(retrain_id, "FAILED" if seed == failed else "FINISHED")
    client.set_terminated(parent, "FINISHED")


@pytest.fixture(scope="module")
def joint_store(tmp_path_factory):
    return build_joint_store(tmp_path_factory.mktemp("joint-store"))


@pytest.fixture(scope="module")
def joint_report(joint_store, tmp_path_factory):
    return job_report(tmp_path_factory.mktemp("joint-report"), NAME, store=joint_store)


def test_a_retrain_is_joined_to_its_search(joint_store):
    trials = join_stages(trial_summary(load_mlflow(NAME, joint_store)))
    assert len(trials) == 3 and not trials["run_name"].str.startswith("retrain_").any()
    by_seed = trials.set_index("seed")
    assert by_seed.loc[1, "test_ppl"] == 70.0 and by_seed.loc[2, "retrain_valid_ppl"] == 79.0
    assert by_seed.loc[1, "retrain_run"] == "retrain_joint_s1_n3-2-2" and by_seed.loc[2, "retrain_seed"] == RETRAIN_SEED
    assert math.isnan(by_seed.loc[3, "test_ppl"]) and by_seed.loc[3, "retrained"] == False   # noqa: E712
    assert by_seed.loc[2, "final_valid_ppl"] == 96.0 and by_seed.loc[2, "params"] == 1002
    assert expected(trials, "test_ppl").tolist() == by_seed["retrained"].tolist()
    assert expected(trials, "final_valid_ppl").all()


def test_joint_search_report_counts_each_trial_once_with_its_search_seed(joint_report):
    check_title(joint_report, "joint_search", NAME)
    trials = joint_report.trials()
    assert sorted(trials["seed"]) == [1, 2, 3] and len(trials) == 3
    assert sorted(trials["retrain_seed"].dropna()) == [RETRAIN_SEED, RETRAIN_SEED]
    assert "seeds 1, 2, 3; 2 of them retrained (retrain seed 1267); primary metric final_valid_ppl" \
        in joint_report.markdown
    search = joint_report.arms("final_valid_ppl")
    assert list(search.index) == ["joint"] and search.loc["joint", "n"] == 3
    assert search.loc["joint", "mean"] == pytest.approx(93.0) and search.loc["joint", "seeds"] == "1,2,3"
    test = joint_report.arms("test_ppl")
    assert test.loc["joint", "n"] == 2 and test.loc["joint", "seeds"] == "1,2"
    assert test.loc["joint", "mean"] == pytest.approx(72.0)
    logs = [math.log(70.0), math.log(74.0)]   # the interval of the geometric mean, by hand
    half = scipy_stats.t.ppf(0.975, 1) * scipy_stats.tstd(logs) / math.sqrt(2)
    assert test.loc["joint", "geo_mean"] == pytest.approx(math.sqrt(70 * 74))
    assert test.loc["joint", "ci_low"] == pytest.approx(math.exp(sum(logs) / 2 - half))
    assert test.loc["joint", "ci_high"] == pytest.approx(math.exp(sum(logs) / 2 + half))
    check_intervals(joint_report)
    check_real_arms(joint_report)
    assert joint_report.notes == []   # the search never meant to be retrained is no gap


def test_a_failed_retrain_leaves_its_search_and_is_a_gap(joint_store, tmp_path):
    report = job_report(tmp_path, "js-failed", store=joint_store)
    trials = report.trials().set_index("seed")
    assert sorted(trials.index) == [1, 2] and trials.loc[1, "test_ppl"] == 70.0
    assert math.isnan(trials.loc[2, "test_ppl"]) and math.isnan(trials.loc[2, "retrain_valid_ppl"])
    assert report.arms("final_valid_ppl").loc["joint", "n"] == 2 and report.arms("test_ppl").loc["joint", "n"] == 1
    assert report.notes == ["1 unfinished trial run(s) left out (1 FAILED); --include-unfinished keeps them",
                            "retrain of joint_s2_n3-2-2 not finished (FAILED): the trial keeps its search only"]
    assert "primary metric final_valid_ppl" in report.markdown   # not every trial has its retrain now


def test_a_frame_of_no_known_job_gets_a_neutral_title(joint_store, tmp_path):
    frame = load_mlflow(NAME, joint_store).drop(columns="job")
    frame.attrs["source"] = {**frame.attrs["source"], "job": None}
    report = write_report(frame, tmp_path, title="x", draw=False)
    assert report.kind == "" and report.markdown.read_text().startswith("# Report: x\n")
    assert "<title>Report: x</title>" in report.html.read_text()


def test_a_study_groups_by_its_arm_tag(joint_store, tmp_path):
    """A study tags each run with its arm: the arms (and the genotype tables) group by that one column."""
    import pandas as pd

    frame = load_mlflow(NAME, joint_store)
    frame["arm"] = frame["mode"].where(frame["phase"] == "search", None).map(lambda m: m and f"{m}-arm")
    report = write_report(frame, tmp_path, job="study", draw=False)
    assert report.markdown.read_text().startswith(f"# Study report: {NAME}\n")
    arms = pd.read_csv(report.tables["arms"])
    assert set(arms["arm"]) == {"joint-arm"} and set(arms[arms["metric"] == "test_ppl"]["n"]) == {2}
    ops = pd.read_csv(report.tables["op_frequency"])
    assert list(ops.columns[:2]) == ["arm", "part"] and set(ops["arm"]) == {"joint-arm"}
    assert "study_arms" in report.tables


def test_the_study_arms_table_keeps_the_registry_order_whatever_order_the_store_returns(joint_store, tmp_path):
    """Concurrent trials reach the store in any order; the arms table reads in the study's own order every time."""
    import pandas as pd

    frame = load_mlflow(NAME, joint_store)
    seed = frame["source.seed"].fillna(frame["seed"]).astype(str)   # a retrain's arm is its search's
    frame["arm"] = seed.map({"1": "joint", "2": "intra", "3": "joint"})
    for i, ordered in enumerate((frame, frame.iloc[::-1].reset_index(drop=True))):
        report = write_report(ordered, tmp_path / str(i), job="study", draw=False)
        assert pd.read_csv(report.tables["study_arms"])["arm"].tolist() == ["intra", "joint"]


def _ray_job(root: Path) -> Path:
    """The joint search's Tune folders (search/ and retrain/ stages) run without MLflow."""
    job = root / "js-ray"
    job.mkdir(parents=True)
    (job / "job.yaml").write_text("job: joint_search\nname: js-ray\nexperiment: ''\n")
    for seed, (final, test) in SEARCHES.items():
        label, trial_id = f"joint_s{seed}_n3-2-2", f"aaaaa_{seed:05d}"
        folder = job / "search" / f"{label}_{trial_id}"
        folder.mkdir(parents=True)
        variant = {"mode": "joint", "seed": seed, "steps": 3, "n_inter": 2, "m": 2}
        (folder / "params.json").write_text(json.dumps({"ess": {"job": "joint_search", "experiment_name": "js-ray",
                                                                 "search": {**variant, "dataset": "ptb"}},
                                                         "variant": variant}))
        rows = [{"epoch": e, "valid/ppl": v, "train/seconds": 1.5, "arch/entropy": 1.6 - 0.1 * e,
                 "genotype/identity_share": identity_share(JOINT), "phase": "search", "trial_id": trial_id,
                 "genotype": JOINT.to_json(None), "time_total_s": 2.0 * e, "timestamp": 1000 + e}
                for e, v in ((1, final + 50), (2, final))]
        (folder / "result.json").write_text("\n".join(map(json.dumps, rows)) + "\n")
        if test is None:
            continue
        trial_id = f"bbbbb_{seed:05d}"
        folder = job / "retrain" / f"retrain_{label}_{trial_id}"
        folder.mkdir(parents=True)
        info = {label: {"seed": seed, "mode": "joint", "search_valid_ppl": final, "search_run_id": None}}
        (folder / "params.json").write_text(json.dumps({"ess": {"job": "joint_search", "experiment_name": "js-ray",
                                                                 "train": {"seed": RETRAIN_SEED, "dataset": "ptb"},
                                                                 "genotype_info": info},
                                                         "variant": {"genotype_label": label}}))
        rows = [{"retrain/epoch": 1, "retrain/valid/best_ppl": test + 5, "retrain/test/ppl": test, "phase": "retrain",
                 "trial_id": trial_id, "time_total_s": 1.0, "timestamp": 2000}]
        (folder / "result.json").write_text("\n".join(map(json.dumps, rows)) + "\n")
    return job


def test_joint_search_report_from_ray_results_joins_by_genotype_label(tmp_path):
    report = job_report(tmp_path / "report", "js-ray", ray_results=_ray_job(tmp_path / "tune"))
    check_title(report, "joint_search", "js-ray")
    trials = report.trials().set_index("seed")
    assert sorted(trials.index) == [1, 2, 3] and trials.loc[2, "test_ppl"] == 74.0
    assert trials.loc[1, "retrain_seed"] == RETRAIN_SEED and math.isnan(trials.loc[3, "retrain_seed"])
    assert report.arms("test_ppl").loc["joint", "seeds"] == "1,2" and report.notes == []
    check_real_arms(report)


def test_interval_scales_keep_a_metric_in_its_range():
    assert [interval_scale(m) for m in ("test_ppl", "retrain/valid/ppl", "search_seconds", "params", "dev/f1",
                                        "genotype/identity_share", "arch/entropy", "t")] == \
        ["log", "log", "log", "log", "percent", "share", "nonnegative", "t"]
    wide = [5000.0, 9000.0]   # two seeds far apart: the plain t interval goes below zero
    assert describe_sample(wide)["ci_low"] < 0
    logged = describe_sample(wide, scale="log")
    assert 0 < logged["ci_low"] < logged["geo_mean"] < logged["ci_high"]
    assert logged["geo_mean"] == pytest.approx(math.sqrt(5000 * 9000)) and logged["mean"] == 7000.0
    f1 = describe_sample([2.0, 98.0], scale="percent")
    assert (f1["ci_low"], f1["ci_high"]) == (0.0, 100.0) and f1["mean"] == 50.0
    with pytest.raises(Exception, match="unknown interval scale"):
        describe_sample(wide, scale="cubic")


def test_aggregate_auto_scale_names_its_interval(joint_store):
    trials = join_stages(trial_summary(load_mlflow(NAME, joint_store)))
    table = aggregate(trials, "final_valid_ppl", by=("mode",), scale="auto")
    assert table["interval"].tolist() == ["log"] and table["ci_low"].iloc[0] > 0
    plain = aggregate(trials, "final_valid_ppl", by=("mode",))   # the default stays Student-t of the mean
    assert plain["interval"].tolist() == ["t"] and plain["ci_low"].iloc[0] < table["geo_mean"].iloc[0]
