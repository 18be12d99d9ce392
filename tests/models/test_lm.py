"""The language model: tying, dropouts, regularisers, size of the published DARTS model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ess import kernels
from ess.models.cells import build_cell
from ess.models.lm import RNNModel, embedded_dropout, lm_loss, locked_dropout, regularisation
from ess.space.genotype import DARTS_V2


def _model(ntoken=50, size=8, **kw) -> RNNModel:
    return RNNModel(ntoken, size, size, build_cell("ess", size, size, DARTS_V2), **kw)


def test_decoder_is_tied_to_the_embedding():
    model = _model()
    assert model.decoder.weight is model.encoder.weight
    names = [n for n, _ in model.named_parameters()]
    assert "decoder.weight" not in names  # counted once


def test_darts_v2_at_850_has_the_published_23m_parameters():
    model = RNNModel(10_000, 850, 850, build_cell("ess", 850, 850, DARTS_V2))
    # embedding 10000*850 + W0 1700*1700 + 8 * 850*1700 + decoder bias 10000
    assert sum(p.numel() for p in model.parameters()) == 8_500_000 + 2_890_000 + 11_560_000 + 10_000


def test_embedded_dropout_equals_masking_the_matrix():
    embed = torch.nn.Embedding(20, 4)
    words = torch.randint(0, 20, (6, 3))
    torch.manual_seed(0)
    ours = embedded_dropout(embed, words, 0.4, training=True)
    torch.manual_seed(0)
    mask = torch.empty(20, 1).bernoulli_(0.6) / 0.6
    torch.testing.assert_close(ours, F.embedding(words, embed.weight * mask))
    assert torch.equal(embedded_dropout(embed, words, 0.4, training=False), embed(words))


def test_locked_dropout_shares_the_mask_over_time():
    x = torch.ones(7, 3, 5)
    y = locked_dropout(x, 0.5, training=True)
    assert ((y == 0) == (y[0:1] == 0)).all() and (y == 0).any()
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(locked_dropout(x, 0.5, training=False), x)


def test_tar_and_ar_by_hand():
    model = _model().train()
    out = model(torch.randint(0, 50, (4, 2)), model.init_state(2))
    raw, dropped = out.raw_output, out.output
    expected = 0.5 * dropped.pow(2).mean() + 2.0 * (raw[1:] - raw[:-1]).pow(2).mean()
    torch.testing.assert_close(regularisation(out, 0.5, 2.0), expected)
    assert regularisation(out, 0.0, 0.0).item() == 0.0


def test_eval_is_deterministic_and_training_uses_dropout():
    torch.manual_seed(0)
    model = _model(dropout=0.5, dropouti=0.5, dropoute=0.2)
    tokens = torch.randint(0, 50, (5, 3))
    model.eval()
    a = model(tokens, model.init_state(3)).logits
    b = model(tokens, model.init_state(3)).logits
    assert torch.equal(a, b)
    model.train()
    c = model(tokens, model.init_state(3)).logits
    assert not torch.allclose(a, c)


def test_untrained_loss_is_near_uniform():
    torch.manual_seed(0)
    model = _model(ntoken=1000, size=16).eval()
    tokens = torch.randint(0, 1000, (10, 4))
    loss = lm_loss(model(tokens, model.init_state(4)), tokens)
    assert abs(loss.item() - torch.log(torch.tensor(1000.0)).item()) < 0.1


# --------------------------------------------------------------------------------------------------
# The loss of an LM output (lm_loss): the logits made only on demand, the decoder weights of its pass


def test_lm_loss_never_makes_the_logits_but_they_are_there_on_demand():
    torch.manual_seed(2)
    model = _model().double().train()
    tokens, targets = torch.randint(0, 50, (4, 3)), torch.randint(0, 50, (4, 3))
    torch.manual_seed(3)
    out = model(tokens, model.init_state(3))
    fused = lm_loss(out, targets)
    assert out._logits is None
    plain = F.cross_entropy(out.logits.reshape(-1, 50), targets.reshape(-1))  # made now, from the same weights
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(lm_loss(out, targets), plain, rtol=0, atol=0)  # the made logits are used
    with kernels.backend("autograd"):
        torch.manual_seed(3)
        out = model(tokens, model.init_state(3))
        torch.testing.assert_close(lm_loss(out, targets), fused, rtol=0, atol=1e-12)


def test_lm_output_keeps_the_decoder_weights_of_its_forward_pass():
    """Under functional_call the loss (computed after the call) must use the swapped-in decoder weights."""
    torch.manual_seed(4)
    model = _model().double().eval()
    tokens, targets = torch.randint(0, 50, (4, 3)), torch.randint(0, 50, (4, 3))
    matrix = torch.randn_like(model.encoder.weight)
    out = torch.func.functional_call(model, {"encoder.weight": matrix}, (tokens, model.init_state(3)))
    copy = _model().double().eval()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        copy.encoder.weight.copy_(matrix)
    expected = lm_loss(copy(tokens, copy.init_state(3)), targets)
    torch.testing.assert_close(lm_loss(out, targets), expected, rtol=0, atol=1e-12)
