"""The benchmark scripts: their smoke runs check fast vs reference equivalence and print one JSON line;
the matmul FLOP count they report is the arithmetic the fused path runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ess import kernels
from ess.kernels import DartsPlan
from ess.models.cells import build_cell
from ess.models.lm import RNNModel, lm_loss
from ess.search.architect import requires_grad
from ess.space.genotype import DARTS_V2
from ess.supernet import MODES, build_search_model

from conftest import requires_ptb

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import common  # noqa: E402
import retrain_step  # noqa: E402


def _run(script: str) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke-test"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert sum(line.startswith("{") for line in lines) == 1  # one JSON line
    assert any(line.startswith("|") for line in lines)  # and a table
    return result


def test_search_step_smoke():
    out = _run("search_step.py")
    assert out["bench"] == "search_step" and out["equivalence"] == "passed"
    norms = {m: ("none", "op") if MODES[m].searches_inter else ("none",) for m in MODES}
    assert {(r["mode"], r["order"], r["impl"], r["norm"]) for r in out["rows"]} == {
        (m, o, i, n) for m in MODES for o in (1, 2) for i in ("fast", "reference") for n in norms[m]}
    assert {k for k in out["checks"] if k.endswith("/op")} == {f"{m}/4/op" for m in MODES if MODES[m].searches_inter}
    for diffs in out["checks"].values():
        assert max(v for k, v in diffs.items() if "_vs_ref64" not in k) <= 1e-5
        assert "f32.step.both.gradients" in diffs or "f32.step.both.fast32_vs_ref64.gradients" in diffs
    assert all(r["tokens_per_s"] > 0 and r["peak_rss_gb"] > 0 for r in out["rows"])
    assert out["matmul_flop_per_s"] > 0
    assert all(r["backend"] == "autograd" for r in out["rows"] if r["impl"] == "reference")
    assert all(r["backend"] != "autograd" for r in out["rows"] if r["impl"] == "fast")


def test_retrain_step_smoke():
    out = _run("retrain_step.py")
    assert out["bench"] == "retrain_step" and out["equivalence"] == "passed"
    assert {r["cell"] for r in out["rows"]} == {"DARTS_V2", "ESS_M3", "lstm"}
    assert set(out["checks"]) == {"DARTS_V2/16", "ESS_M3/16"}
    for diffs in out["checks"].values():
        assert max(diffs.values()) <= 1e-5
    assert all(r["train_tokens_per_s"] > 0 and r["eval_tokens_per_s"] > 0 for r in out["rows"])


def test_interleaved_runs_give_every_configuration_a_row(capsys):
    """``--interleave`` (all configurations in one process, in turn): one row each, as the per-process runs."""
    import search_step

    assert retrain_step.main(["--smoke-test", "--interleave", "--cells", "DARTS_V2,lstm"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert [(r["cell"], r["impl"]) for r in rows] == [("DARTS_V2", "fast"), ("DARTS_V2", "reference"),
                                                      ("lstm", "torch")]
    assert all(len(r["train_seconds"]) == 1 and r["train_tokens_per_s"] > 0 for r in rows)
    assert search_step.main(["--smoke-test", "--interleave", "--modes", "joint", "--orders", "1", "--rounds", "2"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert [(r["norm"], r["impl"]) for r in rows] == [("none", "fast"), ("none", "reference"), ("op", "fast"),
                                                      ("op", "reference")]
    assert all(len(r["tokens_per_s_rounds"]) == 2 for r in rows)
    assert rows[0]["backend"] != "autograd" and rows[1]["backend"] == "autograd"


def test_retrain_step_sizes_every_cell_to_the_parameter_count_asked():
    """``--match DARTS_V2@128``: each cell at the width whose model has DARTS_V2@128's parameter count (1%)."""
    from ess.models.sizing import count_params

    sizes = retrain_step.matched_sizes("DARTS_V2@128", ["DARTS_V2", "ESS_M3", "lstm"], 10_000)
    assert sizes["DARTS_V2"] == 128 and sizes["ESS_M3"] < 128 < sizes["lstm"]
    target = count_params("ess", DARTS_V2, 10_000, 128)
    for cell, size in sizes.items():
        model = retrain_step.build(cell, size, 10_000, 0)
        assert abs(sum(p.numel() for p in model.parameters()) - target) <= 0.01 * target


@requires_ptb
@pytest.mark.slow  # four CLI runs, about a minute
def test_study_cell_times_both_checkouts_in_turn(capsys):
    """The study-cell script on this checkout against itself, at a tiny scale: search and retrain run through the
    CLIs, the checkouts alternate, the ratio is old / new."""
    import study_cell

    assert study_cell.scaled(study_cell.SEARCH, 20) == {"epochs": 1, "max_train_tokens": 20_000,
                                                        "max_eval_tokens": 4_000}
    assert study_cell.main(["--old", str(common.ROOT), "--scale", "400", "--rounds", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["checkout"], r["round"]) for r in out["rows"]] == [("old", 0), ("new", 0), ("new", 1), ("old", 1)]
    assert all(r["search_s"] > 0 and r["retrain_s"] > 0 for r in out["rows"])
    first = out["rows"][0]
    assert out["ratios"][0]["cell_s"] == pytest.approx(first["cell_s"] / out["rows"][1]["cell_s"])
    assert out["genotype"]["history"]["m"] == 3


def test_seed_bundle_smoke():
    """The K-seed prototype: held to K single models before timing; every variant timed for every K."""
    out = _run("seed_bundle.py")
    assert out["bench"] == "seed_bundle" and out["equivalence"] == "passed"
    assert all(max(v.values()) <= 1e-10 for v in out["checks"].values())
    assert {(r["kind"], r["K"], r["variant"]) for r in out["rows"]} == {
        (kind, k, v) for kind in ("search", "retrain") for k in (1, 2) for v in ("bundle", "processes", "wide")}
    assert all(r["tokens_per_s"] > 0 for r in out["rows"])


def test_bundle_draws_every_seeds_own_masks_and_clips_each_seed_by_its_own_norm():
    import seed_bundle

    models = [seed_bundle.build("retrain", 8, 40, seed) for seed in (1, 2)]
    bundle = seed_bundle.Bundle(models)
    assert not torch.equal(bundle.params["encoder.weight"][0], bundle.params["encoder.weight"][1])  # own init
    masks = bundle.masks(3, training=True)
    assert len(masks) == 5 and all(m.size(0) == 2 and not torch.equal(m[0], m[1]) for m in masks)
    assert bundle.masks(3, training=False) == ()
    grads = [torch.tensor([[3.0, 4.0], [0.3, 0.4]]), torch.zeros(2, 3)]
    seed_bundle.clip_per_seed(grads, 1.0)
    assert torch.allclose(grads[0], torch.tensor([[0.6, 0.8], [0.3, 0.4]]), atol=1e-6)  # seed 0 clipped, 1 not


def test_retrain_variants_smoke():
    out = _run("retrain_variants.py")
    assert out["bench"] == "retrain_variants" and out["equivalence"] == "passed"
    assert max(out["checks"].values()) <= 1e-5
    assert {r["variant"] for r in out["rows"]} == {"per_step_weight_grads", "all_nodes_grouped"}
    for r in out["rows"]:
        assert all(r[f"{w}_{k}_tokens_per_s"] > 0 for w in ("default", r["variant"]) for k in ("train", "eval"))


def test_retrain_variants_change_only_the_speed():
    """Each variant (per-step weight gradients, all nodes of a source in one product) gives the default's
    gradients, at a width where the default caps the groups (so the plans really differ)."""
    import retrain_variants

    model = retrain_step.build("DARTS_V2", 16, 40, 0)
    model.cell.intra.plan = DartsPlan.of(DARTS_V2.intra, 1)  # one node per group: all_nodes_grouped differs
    x, y = torch.randint(0, 40, (4, 3)), torch.randint(0, 40, (4, 3))
    with kernels.backend("cpp" if kernels.cpu.load() is not None else "auto"):  # SequenceGrads: C++ steps
        base = retrain_variants._gradients(model, x, y)
        for variant in retrain_variants.VARIANTS.values():
            with variant(model.cell.intra):
                assert common.max_abs_diff(retrain_variants._gradients(model, x, y), base) <= 1e-5
    assert model.cell.intra.plan == DartsPlan.of(DARTS_V2.intra, 1)  # restored
    assert "sequence" not in vars(model.cell.intra)


def test_search_step_refuses_on_a_mismatch(monkeypatch, capsys):
    import search_step

    monkeypatch.setattr(search_step, "_pass", _perturbed(search_step._pass))
    assert search_step.main(["--smoke-test", "--modes", "intra"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1])["equivalence"] == "failed"
    assert not any(line.startswith("|") for line in out)  # no table


def _perturbed(fn):
    def run(model, *args, **kw):
        outputs, grads = fn(model, *args, **kw)
        if model.config.implementation == "fast":
            outputs[0] = outputs[0] + 1e-3
        return outputs, grads
    return run


# --------------------------------------------------------------------------------------------------
# The FLOP count against the matmuls the fused path runs


def _addmm_flop(_acc, a_shape, b_shape, *_, out_shape=None, **__) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _executed(model, grads: str | None, T: int, B: int, backend: str = "eager") -> int:
    """mm/addmm/addmm_/bmm FLOPs of one pass, as torch's flop counter sees them (in-place ``addmm_``, which the
    fused kernels use to accumulate, added to its table)."""
    tokens, targets = torch.randint(0, model.ntoken, (T, B)), torch.randint(0, model.ntoken, (T, B))
    arch = model.arch_parameters() if hasattr(model, "arch_parameters") else []
    weights = model.weight_parameters() if hasattr(model, "weight_parameters") else list(model.parameters())
    counting = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_flop})
    with kernels.backend(backend), counting as counter:
        with requires_grad(weights, grads in ("weights", "both")), requires_grad(arch, grads in ("arch", "both")):
            out = model(tokens, model.init_state(B))
            loss = lm_loss(out, targets)  # the decoder runs inside the fused loss (the logits are lazy)
            if grads:
                torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    counts = counter.get_flop_counts()["Global"]
    return sum(v for k, v in counts.items() if str(k).split(".")[1] in ("mm", "addmm", "addmm_", "bmm"))


@pytest.mark.parametrize("mode", list(MODES))
def test_search_flop_count_is_what_the_fused_path_runs(mode):
    """The count is the executed weight products; the fused path runs only a few more (uncounted) products:
    the softmax-weighted sums over (predecessor, op) of the inter cells, done as bmm, the batch-norm
    running-statistics update, and node 0's input gradient at t = 0 where it reads the initial state."""
    torch.manual_seed(0)
    T, B, d, steps, K, m = 4, 3, 48, 3, 2, 2
    model = build_search_model(30, mode=mode, emsize=d, nhid=d, steps=steps, n_inter=K, m=m, inter_norm="none")
    inter_cells = {"intra": 0, "inter": 2, "joint": 2}[mode]
    mixing = 2 * 2 * (K * 4 * m + sum(4 * k for k in range(1, K))) * d * T * B  # per inter cell and bmm set
    norm = 2 * 2 * (steps + 1) * d * T if mode != "inter" else 0  # two [steps+1] x [steps+1, d] per step
    for grads in (None, "arch", "weights", "both"):
        bmm_sets = 1 + (grads is not None) + (grads in ("arch", "both"))  # forward, dA, dtheta
        first_step = 2 * 2 * d * d * B if grads and mode == "intra" else 0
        expected = common.pass_flops(model, T, B, grads) + inter_cells * bmm_sets * mixing + norm + first_step
        assert _executed(model, grads, T, B) == expected, grads


@pytest.mark.parametrize("cell", ["DARTS_V2", "ESS_M3"])
def test_retrain_flop_count_is_exact(cell):
    """Exact, but for node 0's input gradient at t = 0 (computed, not counted) when it reads the initial state."""
    torch.manual_seed(0)
    model = RNNModel(30, 8, 8, build_cell("ess", 8, 8, retrain_step.GENOTYPES[cell]))
    first_step = 2 * 2 * 8 * 8 * 3 if cell == "DARTS_V2" else 0
    assert common.retrain_flops(model, 5, 3, False) == _executed(model, None, 5, 3)
    assert common.retrain_flops(model, 5, 3, True) + first_step == _executed(model, "weights", 5, 3)


def test_flop_count_of_the_darts_search_iteration():
    """DARTS's search cell at 300: 38 products of 300 x 600 per token and step, plus the 10k decoder."""
    model = build_search_model(10_000, mode="intra", emsize=300, nhid=300)
    per_token_fwd = 38 * 2 * 300 * 600 + 2 * 300 * 10_000
    T, B = 35, 64
    assert common.pass_flops(model, T, B, None) == per_token_fwd * T * B
    # first order: forward + dX only (architecture step; the x projection and node 0 at t = 0 need none)
    # + forward + dW + dX (weight step; node 0's dX at t = 0 reads the initial state)
    arch = per_token_fwd * T * B + (per_token_fwd - 2 * 2 * 300 * 600) * T * B + 2 * 300 * 600 * (T - 1) * B
    weights = 2 * per_token_fwd * T * B + (per_token_fwd - 2 * 300 * 600) * T * B + 2 * 300 * 600 * (T - 1) * B
    assert common.search_iteration_flops(model, T, B, 1) == arch + weights
    lstm = RNNModel(10_000, 300, 300, build_cell("lstm", 300, 300, None))
    assert common.pass_flops(lstm, T, B, None) == (16 * 300 * 300 + 2 * 300 * 10_000) * T * B
    assert DARTS_V2.intra.steps == 8
