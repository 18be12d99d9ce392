"""Search-space knobs of the supernet: candidate op sets, inter-cell normalisation, the beta-decay log-partition."""

from __future__ import annotations

import json

import pytest
import torch

from ess import kernels
from ess.errors import ConfigError
from ess.space import tables
from ess.space.ops import PRIMITIVES
from ess.supernet import MixedInterCell, build_search_model
from ess.supernet.base import INTER_NORMS
from ess.supernet.reference import ReferenceMixedInterCell

DT = torch.float64
NO_IDENTITY = ("none", "tanh", "relu", "sigmoid")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _tiny(**kw):
    args = dict(mode="joint", emsize=6, nhid=6, steps=3, n_inter=2, m=2, dropout=0.0, dropouth=0.0, dropoutx=0.0,
                dropouti=0.0)
    args.update(kw)
    return build_search_model(17, **args).to(DT)


def test_ops_left_out_get_weight_zero_and_no_gradient():
    model = _tiny(intra_ops=NO_IDENTITY, inter_ops=("tanh", "relu", "identity", "none"))
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_()
    aw = json.loads(json.dumps(model.arch_weights()))
    assert aw["intra"]["ops"] == list(NO_IDENTITY) and aw["history"]["ops"] == ["none", "tanh", "relu", "identity"]
    ident, sig = PRIMITIVES.index("identity"), PRIMITIVES.index("sigmoid")
    assert all(row[ident] == 0.0 for row in aw["intra"]["weights"])
    assert all(row[sig] == 0.0 for t in aw["history"]["branches"] for row in t["weights"])
    assert all(abs(sum(row) - 1) < 1e-12 for row in aw["intra"]["weights"])
    tokens = torch.randint(0, 17, (4, 3))
    loss = model(tokens, model.init_state(3)).output.pow(2).sum()
    grads = dict(zip(model.alphas, torch.autograd.grad(loss, model.arch_parameters())))
    assert grads["intra"][:, ident].abs().max() == 0 and grads["intra"][:, :ident].abs().max() > 0
    assert grads["history"][:, sig].abs().max() == 0
    g = model.genotype()
    assert all(e.op != "identity" for e in g.intra.recurrent)
    assert all(e.op != "sigmoid" for n in g.history.nodes + g.input.nodes for e in (n.a, n.b))


def test_masked_ops_fast_equals_reference():
    fast = _tiny(intra_ops=NO_IDENTITY, inter_ops=NO_IDENTITY)
    ref = _tiny(intra_ops=NO_IDENTITY, inter_ops=NO_IDENTITY, implementation="reference")
    ref.load_state_dict(fast.state_dict())
    tokens = torch.randint(0, 17, (5, 4))
    a = fast(tokens, fast.init_state(4)).output
    b = ref(tokens, ref.init_state(4)).output
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("ops, message", [
    (("none",), "at least one op besides"), (("tanh", "gelu"), "unknown op 'gelu'"),
    (("tanh", "tanh"), "listed twice"), ("tanh", "expected a list")])
def test_bad_op_sets_are_one_line_config_errors(ops, message):
    with pytest.raises(ConfigError, match=message):
        _tiny(intra_ops=ops)


def _inter_inputs(m=2, n=5, d=4):
    return [torch.randn(n, d, dtype=DT) for _ in range(m)]


@pytest.mark.parametrize("norm", sorted(INTER_NORMS))
@pytest.mark.parametrize("combination", ["product", "sum", "search"])
def test_inter_norms_fast_equals_reference(norm, combination):
    fast = MixedInterCell(4, m=2, n_nodes=3, combination=combination, norm=norm).to(DT)
    ref = ReferenceMixedInterCell(4, m=2, n_nodes=3, combination=combination, norm=norm).to(DT)
    ref.load_state_dict(fast.state_dict())
    logits = {"ops": torch.randn(tables.inter_row_count(2, 3), 5, dtype=DT, requires_grad=True)}
    if combination == "search":
        logits["combination"] = torch.randn(2, dtype=DT, requires_grad=True)
    inputs = _inter_inputs()
    outs, grads = [], []
    for cell in (fast, ref):
        with cell.bound(logits):
            out = cell(inputs)
        outs.append(out)
        grads.append(torch.autograd.grad(out.pow(2).sum(), [*logits.values(), cell.W]))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-10, rtol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


@pytest.mark.parametrize("norm", kernels.FUSED_INTER_NORMS)
def test_plain_inter_forward_equals_the_fused_step(norm):
    """The fused step (eager in float64: forward and hand-written backward) against the cell's plain code."""
    cell = MixedInterCell(4, m=2, n_nodes=3, combination="search", norm=norm).to(DT)
    logits = {"ops": torch.randn(tables.inter_row_count(2, 3), 5, dtype=DT, requires_grad=True),
              "combination": torch.randn(2, dtype=DT, requires_grad=True)}
    inputs = [x.requires_grad_() for x in _inter_inputs()]
    outs, grads = [], []
    with cell.bound(logits):
        fused = cell(inputs)
        assert type(fused.grad_fn.next_functions[0][0]).__name__ == "InterSearchFunctionBackward"
        theta_in, theta_nodes, comb = cell._weights()
        plain = cell.forward_plain(torch.stack(inputs), theta_in, theta_nodes, comb)
    for out in (fused, plain):
        outs.append(out)
        grads.append(torch.autograd.grad(out.pow(2).sum(), [*inputs, *logits.values(), cell.W], retain_graph=True))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-10, rtol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_branch_norms_run_the_plain_code():
    for norm in sorted(set(INTER_NORMS) - set(kernels.FUSED_INTER_NORMS)):
        cell = MixedInterCell(4, m=2, n_nodes=2, norm=norm).to(DT)
        with cell.bound({"ops": torch.randn(tables.inter_row_count(2, 2), 5, dtype=DT)}):
            out = cell([x.requires_grad_() for x in _inter_inputs()])
        names = set()
        todo = [out.grad_fn]
        while todo:
            node = todo.pop()
            if node is not None and type(node).__name__ not in names:
                names.add(type(node).__name__)
                todo += [n for n, _ in node.next_functions]
        assert "InterSearchFunctionBackward" not in names, norm


def test_normalised_branches_remove_the_sigmoid_offset():
    # with small projections, sigmoid is ~0.5 everywhere: centring the branch removes it, so a branch that is
    # all sigmoid carries (almost) nothing but the slope, where without a norm it carries the constant
    for norm, small in (("none", False), ("centre", True)):
        cell = MixedInterCell(8, m=1, n_nodes=1, combination="sum", residual=False, norm=norm).to(DT)
        with torch.no_grad():
            cell.W.mul_(1e-3)
        logits = torch.full((tables.inter_row_count(1, 1), 5), -30.0, dtype=DT)
        logits[:, PRIMITIVES.index("sigmoid")] = 30.0
        with cell.bound({"ops": logits}):
            out = cell(_inter_inputs(m=1, d=8))
        assert (out.abs().max() < 1e-3) == small


def test_log_partition_is_the_mean_logsumexp_of_every_distribution():
    for scope in ("node", "edge"):
        model = _tiny(softmax_scope=scope, combination="search", inter_ops=NO_IDENTITY)
        with torch.no_grad():
            for p in model.arch_parameters():
                p.normal_()
        values = []
        for part in ("intra", "history", "input"):
            logits = model.part_logits(part)
            if part == "intra":
                values += torch.logsumexp(logits["ops"], -1).tolist()
                continue
            for k in range(2):
                start, n = tables.inter_offset(2, k), 2 + k
                for side in range(2):
                    block = logits["ops"][start + side * n: start + (side + 1) * n]
                    values += ([torch.logsumexp(block.flatten(), 0).item()] if scope == "node"
                               else torch.logsumexp(block, -1).tolist())
            values.append(torch.logsumexp(logits["combination"], 0).item())
        assert model.log_partition().item() == pytest.approx(sum(values) / len(values), rel=1e-12)


def test_normalised_inter_cells_run_under_every_kernel_backend():
    model = _tiny(inter_norm="op")
    tokens = torch.randint(0, 17, (4, 3))
    outs = []
    for name in ("auto", "autograd"):
        with kernels.backend(name):
            outs.append(model(tokens, model.init_state(3)).output)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-9, rtol=0)
