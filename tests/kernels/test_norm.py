"""The search cell's batch norm in the kernels (:mod:`ess.kernels.norm`) against ``nn.BatchNorm1d`` and autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ess.kernels import norm


def test_norm_spec_of_each_module():
    assert norm.norm_spec(nn.Identity()) == norm.NormSpec()
    assert norm.norm_spec(nn.BatchNorm1d(4)) is None  # affine: not the search cell's
    bn = nn.BatchNorm1d(4, affine=False, momentum=0.2)
    assert norm.norm_spec(bn.train()) == norm.NormSpec("batch", 1e-5, update=True, momentum=0.2)
    assert norm.norm_spec(bn.eval()) == norm.NormSpec("running", 1e-5)
    assert norm.norm_spec(nn.BatchNorm1d(4, affine=False, momentum=None).train()) is None  # cumulative average


def test_running_statistics_updated_at_once_equal_successive_updates():
    torch.manual_seed(31)
    bn, ref = nn.BatchNorm1d(5, affine=False).double(), nn.BatchNorm1d(5, affine=False).double()
    u = torch.randn(3, 6, 5, dtype=torch.float64)  # 3 nodes, batch 6
    for k in range(3):
        ref(u[k])
    spec = norm.norm_spec(bn)
    norm.update_running_stats(bn, spec, u.mean(1), u.var(1, unbiased=False), batch=6)
    for a, b in zip(bn.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("mode", ["batch", "running", "none"])
def test_norm_backward_is_the_gradient_of_norm_forward(mode):
    torch.manual_seed(32)
    u = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    rmean, rrstd = torch.randn(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64) + 0.5
    s, _, _, rstd = norm.norm_forward(u, mode, 1e-5, rmean, rrstd)
    if mode == "batch":
        torch.testing.assert_close(s, nn.functional.batch_norm(u, None, None, training=True), rtol=0, atol=1e-12)
    ds = torch.randn_like(s)
    (expected,) = torch.autograd.grad((s * ds).sum(), u)
    torch.testing.assert_close(norm.norm_backward(ds, s.detach(), rstd, mode), expected, rtol=0, atol=1e-12)
