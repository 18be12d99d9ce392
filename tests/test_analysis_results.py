"""docs/results.md's writer (:mod:`analysis.results`): which genotype its shares describe, the transfer units."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from analysis.results import part_shares, render
from analysis.study_data import Cost, StudyData, read_data, retrained_genotypes, write_data
from ess.space.genotype import DARTS_V2, ENAS, save_genotype


def test_shares_describe_the_retrained_genotype_not_the_last_epochs_argmax(tmp_path):
    checkpoint = tmp_path / "trial" / "checkpoint_000003"
    (checkpoint / "retrain").mkdir(parents=True)
    save_genotype(DARTS_V2, checkpoint / "retrain" / "genotype.json")   # what perturbation selection returned
    summary = {"trials": [
        {"arm": "joint-pt", "kind": "search", "seed": 1, "checkpoint": str(checkpoint), "genotype": ENAS.to_json(None)},
        {"arm": "joint-pt", "kind": "search", "seed": 2, "checkpoint": None, "genotype": ENAS.to_json(None)},
        {"arm": "lstm", "kind": "baseline", "seed": 1, "checkpoint": None, "genotype": "lstm"}]}
    genotypes = retrained_genotypes(summary)
    assert genotypes == {("joint-pt", 1): DARTS_V2, ("joint-pt", 2): ENAS}   # the file wins over the summary
    store = pd.DataFrame({"arm": ["joint-pt", "joint-pt"], "genotype/intra/identity_share": [0.9, 0.9],
                          "genotype/history/identity_share": [0.5, 0.5], "genotype/decided_share": [0.0, 0.5],
                          "arch/entropy": [0.99, 0.97]})
    (row,) = part_shares(store, ["joint-pt"], genotypes)
    enas_identity = sum(op == "identity" for op, _ in ENAS.intra.recurrent) / len(ENAS.intra.recurrent)
    assert row["intra"] == f"{(0.125 + enas_identity) / 2:.2f}"
    assert row["history"] == "-"          # neither genotype has a history node: no edge to count
    assert row["input"] == "-"            # not a part this store's search reported
    assert row["decided_share"] == "0.250" and row["entropy"] == "0.980"
    (old,) = part_shares(store, ["joint-pt"])   # without the genotypes: the store's last-epoch shares
    assert old["intra"] == "0.90" and old["history"] == "0.50"


def test_transfer_f1_is_reported_in_percent_as_measured(tmp_path):
    summary = {"name": "s", "tracking_uri": f"sqlite:///{tmp_path / 'none.db'}", "mlflow_experiment": "ess-study",
               "experiment_dir": str(tmp_path / "s"), "parent_run_id": "0",
               "arms": [], "pairs": {}, "trials": [], "headline": {}, "best": {},
               "transfer": [{"task": "conll2003", "cell": "joint", "seed": s, "dev_f1": f, "test_f1": f - 5}
                            for s, f in ((1, 88.0), (2, 89.0))]}
    text = render(StudyData(summary, pd.DataFrame(), pd.DataFrame(), Cost(), {}), tmp_path / "figures", "figures")
    assert "| conll2003 | joint | 2 | 88.50 ± 0.71 | 83.50 ± 0.71 |" in text


def test_the_data_folder_renders_the_same_file_byte_for_byte_without_machine_paths(tmp_path):
    summary = {"job": "study", "name": "s", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
               "mlflow_experiment": "ess-study", "experiment_dir": str(tmp_path / "runs" / "s"), "parent_run_id": "0",
               "stages": ["search"], "seeds": [1, 2], "arms": [], "pairs": {}, "headline": {}, "best": {},
               "trials": [{"arm": "joint", "kind": "search", "seed": s, "checkpoint": str(tmp_path / f"c{s}"),
                           "genotype": ENAS.to_json(None), "retrain_valid_ppl": 100.0 + s} for s in (1, 2)],
               "wikitext2": [{"arm": "joint", "checkpoint": str(tmp_path / "w"), "retrain_valid_ppl": 390.0,
                              "retrain_test_ppl": 400.0, "params": 1000}]}
    epochs = pd.DataFrame({"arm": ["joint"] * 2, "seed": [1, 2], "epoch": [1, 1], "valid/ppl": [500.5, 501.25],
                           "config.search.data_dir": [str(tmp_path / "data")] * 2})
    data = StudyData(summary, epochs.drop(columns="epoch"), epochs, Cost(2, {"search": 3.5}, 0.1),
                     {("joint", 1): ENAS, ("joint", 2): DARTS_V2})
    folder = write_data(data, tmp_path / "data")
    text = "".join(p.read_text() for p in sorted(folder.iterdir()))
    assert str(tmp_path) not in text   # no path of this machine in what is committed
    back = read_data(folder)
    assert back.genotypes == data.genotypes and back.cost == data.cost
    assert back.epochs["valid/ppl"].tolist() == [500.5, 501.25]
    first = render(back, tmp_path / "figures", "results")
    again = render(read_data(write_data(back, tmp_path / "again")), tmp_path / "figures", "results")
    assert first == again and "python -m analysis.results --data results/data --out results.md" in first
    assert "--seeds 1,2 --stages search" in first


def test_reproduce_shows_the_command_that_ran_the_study(tmp_path):
    summary = {"job": "study", "name": "p", "tracking_uri": "", "mlflow_experiment": "ess-study",
               "experiment_dir": "p", "parent_run_id": "0", "arms": [{"arm": "joint"}], "pairs": {}, "trials": [],
               "headline": {}, "best": {}, "seeds": [1, 2]}
    data = StudyData(summary, pd.DataFrame(), pd.DataFrame(), Cost(), {})
    assert "python tune_jobs/study.py --name p --arms joint --seeds 1,2   #" in render(data, tmp_path / "f", "f")
    ran = "python tune_jobs/study.py --preset study-pilot --name p"
    data = StudyData({**summary, "command": ran}, pd.DataFrame(), pd.DataFrame(), Cost(), {})
    back = read_data(write_data(data, tmp_path / "data"))
    text = render(back, tmp_path / "f", "f")
    assert f"```bash\n{ran}\n" in text and "--arms joint" not in text


def test_a_command_goes_with_the_study_not_with_its_data(tmp_path, capsys):
    from analysis.results import main

    assert main(["--data", str(tmp_path), "--command", "x", "--out", str(tmp_path / "r.md")]) != 0
    assert "--command: give it with --study" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


def test_the_discussion_is_kept_in_the_data_folder_so_the_folder_alone_rewrites_the_page(tmp_path, capsys):
    from analysis.results import main

    summary = {"job": "study", "name": "d", "tracking_uri": "", "mlflow_experiment": "ess-study",
               "experiment_dir": "d", "parent_run_id": "0", "arms": [], "pairs": {}, "trials": [],
               "headline": {}, "best": {}}
    folder = write_data(StudyData(summary, pd.DataFrame(), pd.DataFrame(), Cost(), {}), tmp_path / "results" / "data")
    notes = tmp_path / "notes.md"
    notes.write_text("What the numbers cannot say.\n")
    out = tmp_path / "results.md"
    rows = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["--data", str(folder), "--notes", str(notes), "--out", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in rows} == rows   # the rows untouched
    first = out.read_text()
    assert first.endswith("## Discussion\n\nWhat the numbers cannot say.\n")
    assert (folder / "discussion.md").read_text() == "What the numbers cannot say.\n"
    notes.unlink()   # the page's own reproduce line, without --notes, rewrites it byte for byte
    assert "python -m analysis.results --data results/data --out results.md" in first
    assert main(["--data", str(folder), "--out", str(out)]) == 0 and out.read_text() == first
    # an empty discussion removes it; a missing notes file is a one-line error that writes nothing
    empty = tmp_path / "empty.md"
    empty.write_text("\n")
    assert main(["--data", str(folder), "--notes", str(empty), "--out", str(out)]) == 0
    assert "## Discussion" not in out.read_text() and not (folder / "discussion.md").exists()
    capsys.readouterr()
    assert main(["--data", str(folder), "--notes", str(notes), "--out", str(tmp_path / "new.md")]) != 0
    assert f"{notes}: --notes: No such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "new.md").exists()


def test_the_planted_table_holds_recovery_against_random_genotypes(tmp_path):
    from ess.data.planted import planted_lag_edges
    from ess.search.evidence import seed_agreement
    from ess.space.description import describe
    from ess.space.refs import load_genotype
    from ess.space.sample import random_genotypes

    cell = describe(random_genotypes(0, 1, steps=8, m=3, n_inter=3)[0])
    def row(k, arm, seed, reads):
        return {"k": k, "floor_ppl": 2.5, "entropy_nats": 0.9, "count_model_ppl": 3.0, "arm": arm, "seed": seed,
                "retrain_test_ppl": 4.0 + seed, "reaches_planted_input": reads,
                "genotype": cell if reads is not None else "lstm"}
    summary = {"name": "s", "tracking_uri": "", "mlflow_experiment": "ess-study", "experiment_dir": "s",
               "parent_run_id": "0", "arms": [], "pairs": {}, "trials": [], "headline": {}, "best": {},
               "planted": [row(2, "joint", 1, True), row(2, "joint", 2, True), row(2, "lstm", 1, None),
                           row(4, "joint", 1, False), row(4, "joint", 2, False)]}
    text = render(StudyData(summary, pd.DataFrame(), pd.DataFrame(), Cost(), {}), tmp_path / "f", "f")
    lines = [line for line in text.splitlines() if line.startswith("| 2 |") or line.startswith("| 4 |")]
    hits, lagged = planted_lag_edges(load_genotype(cell), 2)
    lag_p = sum(math.comb(2 * lagged, i) for i in range(2 * hits, 2 * lagged + 1)) / 2 ** (2 * lagged)
    assert lines[0].startswith("| 2 | joint | 2 |")
    # 0.84^2; the two seeds found the same cell: agreement 100%, p = 1 / 10,001
    null = seed_agreement([load_genotype(cell)] * 2, ("intra", "history", "input")).overall.null_mean
    assert lines[0].endswith(f"| 2 of 2 | 84% | 0.706 | {2 * hits} of {2 * lagged} | 50% | {lag_p:.3g} | 100% vs "
                             f"{null:.0%} | 0.0001 |")
    assert lines[1].startswith("| 2 | lstm | 1 |") and lines[1].endswith("| - | - | - | - | - | - | - | - |")
    assert f"| 0 of 2 | 0% | 1 | 0 of {2 * lagged} | 0% | 1 |" in lines[2]   # x_(t-3) is out of reach: a control


def test_seeds_for_a_relative_gain_at_the_pooled_seed_noise():
    import math

    from analysis.results import seeds_for_gains
    from analysis.study import required_seeds

    ppl = {"joint": [100.0, 110.0, 121.0], "intra": [200.0, 220.0, 242.0]}   # log sd = log(1.1) in both arms
    summary = {"trials": [{"arm": a, "retrain_valid_ppl": v} for a, vs in ppl.items() for v in vs]}
    sd, need = seeds_for_gains(summary, gains=(0.03,))
    assert sd == pytest.approx(math.log(1.1))
    assert need == {0.03: required_seeds(-math.log(0.97) / math.log(1.1))}


def test_cost_counts_trial_minutes_and_the_wall_time_any_trial_ran(tmp_path):
    import json

    from analysis.study_data import tune_cost

    def trial(stage, name, rows):
        d = tmp_path / stage / name
        d.mkdir(parents=True)
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))

    # two trials side by side in [0, 60] s and one alone in [100, 160] s
    trial("search", "a", [{"timestamp": 30, "time_this_iter_s": 30, "time_total_s": 30},
                          {"timestamp": 60, "time_this_iter_s": 30, "time_total_s": 60}])
    trial("search", "b", [{"timestamp": 60, "time_this_iter_s": 60, "time_total_s": 60}])
    trial("baselines", "c", [{"timestamp": 160, "time_this_iter_s": 60, "time_total_s": 60}])
    cost = tune_cost(tmp_path)
    assert cost.trials == 3 and cost.minutes == {"baselines": 1.0, "search": 2.0}
    assert cost.busy_hours == pytest.approx(120 / 3600)


def test_reading_reports_ratios_of_geometric_means_and_says_cannot_be_told_apart():
    from analysis.results import reading

    summary = {"arms": [{"arm": "joint", "retrain_valid_ppl_geo_mean": 432.6},
                        {"arm": "intra", "retrain_valid_ppl_geo_mean": 421.9},
                        {"arm": "lstm", "retrain_valid_ppl_geo_mean": 500.0}],
               "headline": {"joint_vs_intra": {"diff": 10.7, "ratio": 1.025, "ci_low": 0.946, "ci_high": 1.111,
                                               "p_value": 0.33, "p_holm": 0.9, "n_a": 3, "n_b": 3},
                            "joint_vs_lstm": {"diff": -67.4, "ratio": 0.865, "ci_low": 0.8, "ci_high": 0.93,
                                              "p_value": 0.01, "p_holm": 0.02, "n_a": 3, "n_b": 3}}}
    intra, lstm = reading(summary)
    assert "432.6 vs 421.9" in intra and "(difference +10.7)" in intra
    assert "cannot be told apart: joint's value is from 5.4% lower to 11.1% higher than intra's" in intra
    assert "joint's value is lower than lstm's by 7.0% to 20.0%" in lstm


def test_a_comparison_with_one_seed_says_it_needs_two():
    from analysis.study import headline_line

    line = headline_line("joint_vs_intra", {"diff": 1.0, "ratio": 1.01, "ci_low": math.nan, "ci_high": math.nan,
                                            "p_value": math.nan, "p_holm": math.nan, "n_a": 1, "n_b": 1})
    assert line == "joint_vs_intra: no comparison: it needs at least two seeds per arm (has 1 and 1)"
    assert "nan" not in line


def test_transfer_cells_are_compared_by_welch_with_holm_per_task():
    from scipy import stats

    from analysis.results import transfer_tests

    f1 = {"joint": [85.0, 86.0, 84.5], "intra": [87.0, 88.5, 88.0], "lstm": [88.0, 89.0, 88.2]}
    frame = pd.DataFrame([{"task": "conll2003", "cell": c, "seed": i, "test_f1": v}
                          for c, vs in f1.items() for i, v in enumerate(vs, 1)]
                         + [{"task": "wnut17", "cell": "joint", "seed": 1, "test_f1": 40.0}])
    rows = {(r["arm_a"], r["arm_b"]): r for r in transfer_tests(frame)}
    assert len(rows) == 3 and all(r["task"] == "conll2003" for r in rows.values())   # wnut17: one cell, no pair
    ps = {}
    for (a, b), r in rows.items():
        ref = stats.ttest_ind(f1[a], f1[b], equal_var=False)
        assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert r["diff"] == pytest.approx(sum(f1[a]) / 3 - sum(f1[b]) / 3)
        ps[(a, b)] = ref.pvalue
    order = sorted(ps, key=ps.get)
    assert rows[order[0]]["p_holm"] == pytest.approx(min(1.0, 3 * ps[order[0]]))


def test_the_reproduce_line_names_the_page_from_the_folder_the_command_ran_in(tmp_path, monkeypatch):
    from analysis.results import main

    summary = {"job": "study", "name": "d", "tracking_uri": "", "mlflow_experiment": "ess-study",
               "experiment_dir": "d", "parent_run_id": "0", "arms": [], "pairs": {}, "trials": [],
               "headline": {}, "best": {}}
    folder = write_data(StudyData(summary, pd.DataFrame(), pd.DataFrame(), Cost(), {}),
                        tmp_path / "docs" / "results" / "data")
    monkeypatch.chdir(tmp_path)   # the repository root: docs/results.md is run as docs/results.md
    assert main(["--data", "docs/results/data", "--out", "docs/results.md"]) == 0
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "python -m analysis.results --data docs/results/data --out docs/results.md    #" in page
    assert main(["--data", str(folder), "--out", str(tmp_path / "docs" / "results.md")]) == 0
    assert (tmp_path / "docs" / "results.md").read_text() == page   # the same page, however the path is spelled


@pytest.mark.parametrize("page, pilot", [("results", False), ("pilot", True)])
def test_the_committed_rows_rewrite_the_committed_page_byte_for_byte(page, pilot, tmp_path):
    root = Path(__file__).resolve().parents[1]
    data = read_data(root / "docs" / page / "data")
    text = render(data, tmp_path / page, page, pilot, page=f"docs/{page}")
    assert text == (root / "docs" / f"{page}.md").read_text()
