"""The search cells and search model of ess.supernet against the reference, hand loops and discrete cells."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from ess.errors import ConfigError
from ess.models.cells import DARTSCell, ESSCell, InterCell
from ess.models.lm import RNNModel, lm_loss
from ess.space import derive, tables
from ess.space.genotype import DARTS_V2, IDENTITY_INTER, Edge, InterGenotype, InterNode, IntraGenotype
from ess.space.ops import PRIMITIVES
from ess.supernet import (
    MODES,
    MixedInterCell,
    MixedIntraCell,
    SearchModel,
    build_search_model,
)
from ess.supernet.reference import ReferenceMixedInterCell, ReferenceMixedIntraCell

DT = torch.float64
ACTS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda v: v}
BIG = 1e4  # softmax of logits {BIG, 0, ...} is an exact one-hot in float64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _close(a, b, tol=1e-10):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= tol, (a - b).abs().max().item()


def _grads(out, params):
    return torch.autograd.grad(out.pow(2).sum() + out.sum(), params, allow_unused=False)


# --------------------------------------------------------------------------------------------------
# Hand-written DARTS search cell (the test's own loop over edges and ops)


def hand_intra_step(cell, probs, x_proj, h_prev, h_mask, batchnorm=True):
    def bn(v):
        if not batchnorm:
            return v
        return (v - v.mean(0)) / torch.sqrt(v.var(0, unbiased=False) + 1e-5)

    nh = cell.nhid
    c0, h0 = (x_proj + (h_prev * h_mask) @ cell.W0[cell.ninp:]).split(nh, -1)
    states = [bn(h_prev + torch.sigmoid(c0) * (torch.tanh(h0) - h_prev))]
    edge = 0
    for i in range(1, cell.steps + 1):
        s = torch.zeros_like(h_prev)
        for j in range(i):
            c, h = ((states[j] * h_mask) @ cell.Ws[i - 1]).split(nh, -1)
            for k, name in enumerate(PRIMITIVES):
                if name != "none":
                    s = s + probs[edge, k] * (states[j] + torch.sigmoid(c) * (ACTS[name](h) - states[j]))
            edge += 1
        states.append(bn(s))
    return torch.stack(states[1:]).mean(0)


def _intra_inputs(emsize=5, nhid=4, batch=6):
    x_proj = torch.randn(batch, 2 * nhid, dtype=DT)
    h_prev = torch.randn(batch, nhid, dtype=DT)
    h_mask = torch.bernoulli(torch.full((batch, nhid), 0.7, dtype=DT)) / 0.7
    return x_proj, h_prev, h_mask


@pytest.mark.parametrize("batchnorm", [True, False])
def test_mixed_intra_equals_reference_and_hand_loop(batchnorm):
    fast = MixedIntraCell(5, 4, steps=4, batchnorm=batchnorm).to(DT)
    ref = ReferenceMixedIntraCell(5, 4, steps=4, batchnorm=batchnorm).to(DT)
    ref.load_state_dict(fast.state_dict())
    logits = torch.randn(10, len(PRIMITIVES), dtype=DT, requires_grad=True)
    x_proj, h_prev, h_mask = _intra_inputs()
    outs, grads = [], []
    for cell in (fast, ref):
        with cell.bound({"ops": logits}):
            out = cell.step(x_proj, h_prev, h_mask)
        outs.append(out)
        grads.append(_grads(out, [logits, cell.W0, *cell.Ws]))
    hand = hand_intra_step(fast, torch.softmax(logits, -1), x_proj, h_prev, h_mask, batchnorm)
    _close(outs[0], outs[1])
    _close(outs[0], hand)
    for g_fast, g_ref in zip(*grads):
        _close(g_fast, g_ref)


def test_mixed_intra_arch_shape_and_default_steps():
    cell = MixedIntraCell(7, 7)
    assert cell.steps == 8
    assert cell.arch_spec() == {"ops": (36, 5)}
    assert isinstance(cell.bn, torch.nn.BatchNorm1d) and not cell.bn.affine


def test_unbound_cell_raises_and_model_unbinds_after_forward():
    cell = MixedIntraCell(3, 3, steps=2)
    with pytest.raises(RuntimeError, match="not bound"):
        cell.step(torch.zeros(2, 6), torch.zeros(2, 3))
    model = build_search_model(20, mode="joint", emsize=4, nhid=4, steps=2, n_inter=1, m=2)
    model(torch.randint(0, 20, (3, 2)), model.init_state(2))
    for module in model.searched_parts().values():
        assert module._bound_weights is None


# --------------------------------------------------------------------------------------------------
# Mixed inter cell vs the reference


INTER_CASES = list(itertools.product(["node", "edge"], ["product", "sum", "search"], [True, False]))


@pytest.mark.parametrize("scope,combination,residual", INTER_CASES)
def test_mixed_inter_equals_reference_outputs_and_gradients(scope, combination, residual):
    m, n, d = 2, 3, 4
    fast = MixedInterCell(d, m, n, combination, residual, scope).to(DT)
    ref = ReferenceMixedInterCell(d, m, n, combination, residual, scope).to(DT)
    ref.load_state_dict(fast.state_dict())
    alphas = {k: torch.randn(*shape, dtype=DT, requires_grad=True) for k, shape in fast.arch_spec().items()}
    assert ("combination" in alphas) == (combination == "search")
    inputs = [torch.randn(3, 2, d, dtype=DT, requires_grad=True) for _ in range(m)]  # any leading shape
    outs, grads = [], []
    for cell in (fast, ref):
        with cell.bound(alphas):
            out = cell(inputs)
        outs.append(out)
        grads.append(_grads(out, [cell.W, *alphas.values(), *inputs]))
    assert outs[0].shape == (3, 2, d)
    _close(outs[0], outs[1], 1e-6)
    for g_fast, g_ref in zip(*grads):
        _close(g_fast, g_ref, 1e-6)


def test_mixed_inter_arch_shapes():
    cell = MixedInterCell(6)  # m = 3, n = 3
    assert cell.m == 3 and cell.W.shape == (2, 5, 6, 6)
    assert cell.arch_spec() == {"ops": (2 * (3 + 4 + 5), 5)}
    assert MixedInterCell(6, combination="search").arch_spec()["combination"] == (2,)


def test_softmax_scopes():
    cell_node = MixedInterCell(3, m=2, n_nodes=2, softmax_scope="node")
    cell_edge = MixedInterCell(3, m=2, n_nodes=2, softmax_scope="edge")
    logits = torch.randn(tables.inter_row_count(2, 2), 5)
    for k, theta in enumerate(cell_node.arch_probabilities({"ops": logits}).branches):
        assert theta.shape == (2, 2 + k, 5)
        torch.testing.assert_close(theta.sum((1, 2)), torch.ones(2))  # one softmax per branch
    for k, theta in enumerate(cell_edge.arch_probabilities({"ops": logits}).branches):
        torch.testing.assert_close(theta.sum(2), torch.ones(2, 2 + k))  # one softmax per (branch, j)


# --------------------------------------------------------------------------------------------------
# One-hot architecture weights reproduce the discrete cells


def intra_one_hot(genotype: IntraGenotype) -> torch.Tensor:
    logits = torch.zeros(tables.intra_edge_count(genotype.steps), 5, dtype=DT)
    for r, (i, j) in enumerate(tables.intra_rows(genotype.steps)):
        edge = genotype.recurrent[i - 1]
        logits[r, PRIMITIVES.index(edge.op if j == edge.pred else "none")] = BIG
    return logits


def inter_one_hot(genotype: InterGenotype, scope: str) -> torch.Tensor:
    logits = torch.zeros(tables.inter_row_count(genotype.m, len(genotype.nodes)), 5, dtype=DT)
    for r, (k, b, j) in enumerate(tables.inter_rows(genotype.m, len(genotype.nodes))):
        edge = getattr(genotype.nodes[k], b)
        if j == edge.pred:
            logits[r, PRIMITIVES.index(edge.op)] = BIG
        elif scope == "edge":  # per-(branch, j) softmax: the other predecessors go to the zero op
            logits[r, PRIMITIVES.index("none")] = BIG
    return logits


INTRA_G = IntraGenotype((Edge("sigmoid", 0), Edge("relu", 1), Edge("identity", 0), Edge("tanh", 2)), (1, 2, 3, 4))
INTER_NODES = (InterNode(Edge("tanh", 1), Edge("relu", 0)), InterNode(Edge("identity", 2), Edge("sigmoid", 0)),
               InterNode(Edge("relu", 3), Edge("tanh", 1)))


def test_one_hot_intra_equals_darts_cell():
    mixed = MixedIntraCell(5, 4, steps=4, batchnorm=False).to(DT)
    discrete = mixed.to_discrete(INTRA_G)
    assert isinstance(discrete, DARTSCell)
    logits = intra_one_hot(INTRA_G)
    assert derive.derive_intra(torch.softmax(logits, -1), 4) == INTRA_G
    x_proj, h_prev, h_mask = _intra_inputs()
    with mixed.bound({"ops": logits}):
        out = mixed.step(x_proj, h_prev, h_mask)
    _close(out, discrete.step(x_proj, h_prev, h_mask), 1e-12)


@pytest.mark.parametrize("scope,combination,residual", INTER_CASES)
def test_one_hot_inter_equals_inter_cell(scope, combination, residual):
    m, d = 2, 4
    derived_comb = "sum" if combination == "sum" else "product"
    target = InterGenotype(m=m, nodes=INTER_NODES, combination=derived_comb, residual=residual)
    mixed = MixedInterCell(d, m, len(INTER_NODES), combination, residual, scope).to(DT)
    alphas = {"ops": inter_one_hot(target, scope)}
    if combination == "search":
        alphas["combination"] = torch.tensor([BIG, 0.0], dtype=DT)  # product
    w = mixed.arch_probabilities(alphas)
    tables = [t for node in w.branches for t in node]
    assert derive.derive_inter(tables, m, combination, residual, w.combination) == target
    discrete = mixed.to_discrete(target)
    inputs = [torch.randn(5, d, dtype=DT) for _ in range(m)]
    with mixed.bound(alphas):
        _close(mixed(inputs), discrete(inputs), 1e-12)


def test_one_hot_search_model_equals_discrete_model():
    """Joint search model with one-hot logits (batch norm off) = the discrete ESS model of its genotype."""
    history = InterGenotype(m=2, nodes=INTER_NODES[:2], combination="product")
    inputs_g = InterGenotype(m=2, nodes=(InterNode(Edge("sigmoid", 1), Edge("tanh", 0)),
                                         InterNode(Edge("relu", 0), Edge("identity", 2))), combination="product")
    model = build_search_model(30, mode="joint", emsize=4, nhid=4, steps=4, n_inter=2, m=2, batchnorm=False,
                               dropoute=0.1, inter_norm="none").to(DT)
    with torch.no_grad():
        model.alphas["intra"].copy_(intra_one_hot(INTRA_G))
        model.alphas["history"].copy_(inter_one_hot(history, "node"))
        model.alphas["input"].copy_(inter_one_hot(inputs_g, "node"))
    g = model.genotype()
    assert (g.intra, g.history, g.input) == (INTRA_G, history, inputs_g)
    parts = model.parts()
    cell = ESSCell(4, 4, parts["intra"].to_discrete(g.intra), parts["history"].to_discrete(g.history),
                   parts["input"].to_discrete(g.input), dropoutx=model.config.dropoutx, dropouth=model.config.dropouth)
    discrete = RNNModel(30, 4, 4, cell, dropout=model.dropout, dropouti=model.dropouti, dropoute=model.dropoute).to(DT)
    discrete.encoder.weight.data.copy_(model.encoder.weight)
    discrete.decoder.bias.data.copy_(model.decoder.bias)
    tokens = torch.randint(0, 30, (6, 3))
    state = model.init_state(3)
    outs = []
    for net in (model, discrete):  # training mode: same seed, same dropout masks
        torch.manual_seed(5)
        outs.append(net(tokens, state))
    _close(outs[0].logits, outs[1].logits, 1e-12)
    for a, b in zip(outs[0].state, outs[1].state):
        _close(a, b, 1e-12)


# --------------------------------------------------------------------------------------------------
# gradcheck wrt architecture parameters


def test_gradcheck_intra_arch():
    cell = MixedIntraCell(3, 3, steps=3).to(DT)
    x_proj, h_prev, h_mask = _intra_inputs(3, 3, batch=4)
    logits = torch.randn(6, 5, dtype=DT, requires_grad=True)

    def fn(lg):
        with cell.bound({"ops": lg}):
            return cell.step(x_proj, h_prev, h_mask)

    assert torch.autograd.gradcheck(fn, (logits,))


@pytest.mark.parametrize("scope", ["node", "edge"])
def test_gradcheck_inter_arch(scope):
    cell = MixedInterCell(3, m=2, n_nodes=2, combination="search", softmax_scope=scope).to(DT)
    inputs = [torch.randn(4, 3, dtype=DT) for _ in range(2)]
    ops = torch.randn(tables.inter_row_count(2, 2), 5, dtype=DT, requires_grad=True)
    comb = torch.randn(2, dtype=DT, requires_grad=True)

    def fn(o, c):
        with cell.bound({"ops": o, "combination": c}):
            return cell(inputs)

    assert torch.autograd.gradcheck(fn, (ops, comb))


# --------------------------------------------------------------------------------------------------
# The search model


def darts_search_reference(model: SearchModel, tokens: torch.Tensor) -> torch.Tensor:
    """DARTS's search model by hand (dropouts off): embed, the hand cell per step, tied decoder."""
    cell = model.cell.intra
    probs = torch.softmax(model.alphas["intra"], -1)
    emb = model.encoder(tokens)
    h = torch.zeros(tokens.size(1), model.nhid, dtype=emb.dtype)
    ones = torch.ones_like(h)
    outputs = []
    for t in range(tokens.size(0)):
        x_proj = emb[t] @ cell.W0[: model.ninp]
        h = hand_intra_step(cell, probs, x_proj, h, ones)
        outputs.append(h)
    return torch.stack(outputs) @ model.encoder.weight.t() + model.decoder.bias


def test_intra_mode_is_the_darts_search_model():
    model = build_search_model(25, mode="intra", emsize=4, nhid=4, steps=3, dropout=0.0, dropouth=0.0,
                               dropoutx=0.0, dropouti=0.0, dropoute=0.0).to(DT)
    history, inputs = model.cell.history, model.cell.inputs
    for inter in (history, inputs):
        assert isinstance(inter, InterCell) and inter.is_identity and inter.m == 1
        assert not list(inter.parameters())
        v = torch.randn(2, 4, dtype=DT)
        assert inter([v]) is v
    assert [n for n, _ in model.named_arch_parameters()] == ["alphas.intra"]
    with torch.no_grad():
        model.alphas["intra"].normal_()
    h_queue, x_queue = model.init_state(3)
    assert h_queue.shape == (1, 3, 4) and x_queue.shape == (0, 3, 4)
    tokens = torch.randint(0, 25, (5, 3))
    out = model(tokens, (h_queue, x_queue))
    _close(out.logits, darts_search_reference(model, tokens))


@pytest.mark.parametrize("mode", list(MODES))
def test_fast_model_equals_reference_model(mode):
    kw = dict(mode=mode, emsize=4, nhid=4, steps=3, n_inter=2, m=2, dropoute=0.1, inter_norm="none",
              combination="search" if MODES[mode].searches_inter else "product")
    fast = build_search_model(20, **kw).to(DT)
    ref = build_search_model(20, implementation="reference", **kw).to(DT)
    ref.load_state_dict(fast.state_dict())
    tokens, targets = torch.randint(0, 20, (5, 3)), torch.randint(0, 20, (5, 3))
    results = []
    for model in (fast, ref):
        torch.manual_seed(3)  # same dropout masks
        out = model(tokens, model.init_state(3))
        loss = lm_loss(out, targets)
        results.append((out, torch.autograd.grad(loss, list(model.parameters()))))
    _close(results[0][0].logits, results[1][0].logits)
    for a, b in zip(results[0][1], results[1][1]):
        _close(a, b)


EXPECTED_ARCH = {
    "intra": ["alphas.intra"],
    "inter": ["alphas.history", "alphas.input"],
    "joint": ["alphas.intra", "alphas.history", "alphas.input"],
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("combination", ["product", "search"])
def test_arch_and_weight_parameters_partition(mode, combination):
    if combination == "search" and not MODES[mode].searches_inter:   # nothing to search: refused
        with pytest.raises(ConfigError, match="^combination: 'search' searches the inter-cell"):
            build_search_model(20, mode=mode, emsize=6, nhid=6, combination=combination)
        return
    model = build_search_model(20, mode=mode, emsize=6, nhid=6, combination=combination)
    names = [n for n, _ in model.named_arch_parameters()]
    expected = list(EXPECTED_ARCH[mode])
    if combination == "search" and mode != "intra":
        expected = [n for base in expected for n in
                    ([base] if base == "alphas.intra" else [base, base + "_combination"])]
    assert names == expected
    arch = {id(p) for p in model.arch_parameters()}
    weights = {id(p) for p in model.weight_parameters()}
    assert not arch & weights
    assert arch | weights == {id(p) for p in model.parameters()}
    assert id(model.encoder.weight) in weights
    shapes = dict(model.named_arch_parameters())
    if "alphas.intra" in shapes:
        assert shapes["alphas.intra"].shape == (36, 5)
    if "alphas.history" in shapes:
        assert shapes["alphas.history"].shape == (24, 5)
    for p in model.arch_parameters():
        assert p.abs().max() < 1e-2  # 1e-3 * randn
    if mode == "inter":
        assert isinstance(model.cell.intra, DARTSCell) and model.cell.intra.genotype == DARTS_V2.intra


def test_arch_weights_json_genotype_and_entropy():
    model = build_search_model(20, mode="joint", emsize=6, nhid=6, steps=3, n_inter=2, m=2, combination="search",
                               softmax_scope="edge")
    aw = json.loads(json.dumps(model.arch_weights()))
    assert aw["mode"] == "joint" and aw["columns"] == list(PRIMITIVES)
    assert aw["intra"]["rows"][:3] == ["1<-0", "2<-0", "2<-1"] and len(aw["intra"]["weights"]) == 6
    hist = aw["history"]
    assert [(t["node"], t["branch"], t["rows"]) for t in hist["branches"]] == [
        (0, "a", [0, 1]), (0, "b", [0, 1]), (1, "a", [0, 1, 2]), (1, "b", [0, 1, 2])]
    assert set(hist["combination_weights"]) == {"product", "sum"}
    assert derive.derive_genotype(aw) == model.genotype()
    # logits ~ 1e-3: every distribution is nearly uniform over 5 ops (edge scope) or 2 combinations
    dists = tables.distributions(aw)
    assert sum(len(d) for d in dists.values()) == 6 + 2 * 11
    assert model.arch_entropy() == pytest.approx(1.0, abs=1e-4)   # relative to its maximum: 1 = uniform


def test_arch_weights_fixed_parts():
    intra = build_search_model(20, mode="intra", emsize=6, nhid=6)
    aw = intra.arch_weights()
    assert aw["history"] == {"searched": False, "genotype": tables.inter_to_dict(IDENTITY_INTER)}
    g = intra.genotype()
    assert g.history.is_identity and g.input.is_identity and g.intra.steps == 8
    inter = build_search_model(20, mode="inter", emsize=6, nhid=6, n_inter=2)
    g = inter.genotype()
    assert g.intra == DARTS_V2.intra and len(g.history.nodes) == 2 and g.history.m == 3


def test_new_copies_architecture():
    model = build_search_model(20, mode="joint", emsize=4, nhid=4, steps=2, n_inter=1, m=2).to(DT)
    fresh = model.new()
    assert fresh.config == model.config and fresh.encoder.weight.dtype == DT
    for a, b in zip(fresh.arch_parameters(), model.arch_parameters()):
        assert torch.equal(a, b) and a is not b
    assert not torch.equal(fresh.encoder.weight, model.encoder.weight)
    clone = model.new(copy_weights=True)
    model.eval()
    clone.eval()
    tokens = torch.randint(0, 20, (4, 2))
    _close(model(tokens, model.init_state(2)).logits, clone(tokens, clone.init_state(2)).logits, 0)


@pytest.mark.parametrize("kwargs,field", [
    (dict(mode="both"), "mode"),
    (dict(mode="joint", m=0), "m"),
    (dict(mode="inter", n_inter=0), "n_inter"),
    (dict(mode="joint", n_inter=0), "n_inter"),
    (dict(mode="intra", steps=0), "steps"),
    (dict(mode="joint", combination="max"), "combination"),
    (dict(mode="joint", softmax_scope="cell"), "softmax_scope"),
    (dict(mode="joint", nhid=5), "nhid"),
    (dict(mode="joint", dropout=1.0), "dropout"),
    (dict(mode="joint", residual="yes"), "residual"),
    (dict(mode="joint", implementation="gpu"), "implementation"),
])
def test_build_validation(kwargs, field):
    kw = dict(emsize=4, nhid=4)
    kw.update(kwargs)
    with pytest.raises(ConfigError, match=f"^{field}:"):
        build_search_model(20, **kw)


def test_intra_mode_ignores_inter_counts():
    model = build_search_model(20, mode="intra", emsize=4, nhid=4, steps=2, n_inter=0)
    assert model.cell.history.is_identity


def test_training_step_all_modes_finite():
    for mode in MODES:
        model = build_search_model(20, mode=mode, emsize=4, nhid=4, steps=2, n_inter=1, m=2)
        out = model(torch.randint(0, 20, (4, 2)), model.init_state(2))
        lm_loss(out, torch.randint(0, 20, (4, 2))).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
