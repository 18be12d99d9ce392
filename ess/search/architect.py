"""The bilevel architecture step of DARTS (Liu et al., ICLR 2019), for the ESS search model.

The search solves ``min_alpha L_val(w*(alpha), alpha)`` s.t. ``w*(alpha) = argmin_w L_train(w, alpha)``.
One architecture step updates ``alpha`` with Adam (betas 0.9/0.999, L2 ``arch_weight_decay``) along

* first order: ``dalpha L_val(w, alpha)``;
* second order (DARTS eq. 6): ``dalpha L_val(w', alpha)`` with the one-step look-ahead
  ``w' = w - xi (dw L_train(w, alpha) + wd w)``, which by the chain rule (DARTS eq. 7) is

      dalpha L_val(w', alpha) - xi d2_{alpha,w} L_train(w, alpha) v,     v = dw' L_val(w', alpha),

  the Hessian-vector product taken by central finite differences (DARTS eq. 8)

      d2_{alpha,w} L_train v ~ (dalpha L_train(w+, alpha) - dalpha L_train(w-, alpha)) / (2R),
      w+- = w +- R v,  R = 0.01 / ||v||.

  Two forms (``second_order``):

  * ``darts`` (default) is the public DARTS code's ``_backward_step_unrolled`` (quark0/darts, rnn/architect.py,
    after its "better hessian-vector multiplication" commit), so results compare with DARTS's ``--unrolled``:
    ``v`` is first clipped to the weights' clip norm (``v <- v min(1, clip / ||v||)``: never scaled up), and
    the Hessian term is multiplied by ``xi clip / ||g||``, ``g = dw L_train`` the training gradient, *not*
    clamped to 1: DARTS's ``_clip`` returns ``clip / (||g|| + 1e-6)`` whether or not it scaled ``g``, and
    the Hessian term is scaled by that value, so when ``||g|| < clip`` the term is ``clip / ||g||`` times
    larger than the look-ahead (which steps with ``g`` unscaled) implies. The one difference from the public
    code is that the look-ahead steps the tied embedding/decoder matrix, which the public code's never does
    (see below).
  * ``exact`` leaves ``v`` as it is and multiplies the Hessian term by ``xi min(1, clip / ||g||)``, the
    factor the look-ahead used: the finite-difference form of the exact gradient of the unrolled objective
    with the clip factor held constant (held to double backward in the tests).

Fixes of the defects of the public DARTS code (reference.md section 6):

* first order: the architecture gradient is taken with ``torch.autograd.grad`` over the architecture
  parameters only, with the network weights' ``requires_grad`` off during the pass, so no weight
  gradient is computed and no weight ``.grad`` is touched;
* the virtual step covers every network weight, the tied embedding/decoder matrix included (it is run
  functionally with ``torch.func.functional_call``, which keeps the tie), and the real weights are
  never modified (no copy to restore, no in-place perturbation);
* the look-ahead pass and the ``w+`` and ``w-`` passes use the same training batch, state and dropout
  masks: the RNG state is saved before the training pass and replayed in a forked RNG for the two
  finite-difference passes. The validation pass draws its own masks.

An architect step changes nothing but the architecture parameters and its optimiser: network weights,
their gradients and the model's buffers (batch-norm running statistics) are as before; with
``freeze_buffers=False`` (DARTS) the passes on the real weights update the running statistics, as the public
code's do. ``penalty`` adds a regulariser of the architecture alone (e.g. beta-decay) to the validation loss.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ess.models.cells import State, detach_state
from ess.models.lm import LMOutput, lm_loss, regularisation

Batch = tuple[Tensor, Tensor]  # (tokens [T, B], next-token targets [T, B])
SECOND_ORDER_FORMS = ("darts", "exact")


class MaskReplay:
    """A snapshot of the RNG streams that draw dropout masks, replayable any number of times.

    ``with snapshot.replay(): ...`` runs the block in a forked RNG reset to the snapshot, so the block
    draws exactly the masks drawn right after the snapshot was taken, and the global RNG is left as it
    was. Covers the CPU generator and, for a CUDA model, that device's generator.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        devices = [self.device] if self.cuda_state is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if self.cuda_state is not None:
                torch.cuda.set_rng_state(self.cuda_state, self.device)
            yield


@contextlib.contextmanager
def requires_grad(params: Iterable[nn.Parameter], flag: bool) -> Iterator[None]:
    """Temporarily set ``requires_grad`` of ``params`` (restored afterwards)."""
    params = list(params)
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(flag)
        yield
    finally:
        for p, s in zip(params, saved):
            p.requires_grad_(s)


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (e.g. batch-norm running statistics) of ``model`` after the block."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _norm(tensors: Sequence[Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def _fill(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like)]


class Architect:
    """Adam over ``model.arch_parameters()`` only (intra and inter together in joint mode).

    ``model`` is a :class:`ess.supernet.SearchModel` (anything with ``arch_parameters()``,
    ``named_weight_parameters()`` and ``forward(tokens, state) -> LMOutput``). The loss is the LM loss
    plus AR (``alpha``) / TAR (``beta``) regularisation when non-zero. ``unrolled`` selects the second-order
    gradient and ``second_order`` its form (``darts`` or ``exact``); ``fd_epsilon`` is the 0.01 of
    ``R = 0.01 / ||v||``.
    """

    def __init__(self, model: nn.Module, arch_lr: float = 3e-3, arch_weight_decay: float = 1e-3,
                 unrolled: bool = False, *, alpha: float = 0.0, beta: float = 0.0, fd_epsilon: float = 1e-2,
                 second_order: str = "darts", freeze_buffers: bool = True,
                 penalty: Callable[[], Tensor] | None = None):
        self.model = model
        self.arch_params: list[nn.Parameter] = list(model.arch_parameters())
        if not self.arch_params:
            raise ValueError("the model has no architecture parameters to optimise")
        if second_order not in SECOND_ORDER_FORMS:
            raise ValueError(f"second_order: unknown {second_order!r} (known: {', '.join(SECOND_ORDER_FORMS)})")
        self.unrolled, self.alpha, self.beta, self.fd_epsilon = unrolled, alpha, beta, fd_epsilon
        self.second_order, self.freeze_buffers, self.penalty = second_order, freeze_buffers, penalty
        self.optimizer = torch.optim.Adam(self.arch_params, lr=arch_lr, betas=(0.9, 0.999),
                                          weight_decay=arch_weight_decay)
        self.last: dict[str, float] = {}  # read-outs of the last step, for logging

    # ---- loss

    def loss(self, out: LMOutput, targets: Tensor) -> Tensor:
        loss = lm_loss(out, targets)
        if self.alpha or self.beta:
            loss = loss + regularisation(out, self.alpha, self.beta)
        return loss

    def _run(self, batch: Batch, state: State, weights: dict[str, Tensor] | None = None) -> tuple[Tensor, LMOutput]:
        """The loss of ``batch`` at the model's weights, or at ``weights`` (by name) if given."""
        tokens, targets = batch
        state = detach_state(state)
        out = self.model(tokens, state) if weights is None else functional_call(self.model, weights, (tokens, state))
        return self.loss(out, targets), out

    # ---- gradients

    def arch_gradient(self, train_batch: Batch | None, valid_batch: Batch, train_state: State | None,
                      valid_state: State, network_lr: float = 0.0, network_weight_decay: float = 0.0,
                      network_clip: float | None = None) -> tuple[list[Tensor], State]:
        """The architecture gradient (first or second order) and the new validation state.

        ``network_lr``/``network_weight_decay``/``network_clip`` describe the weight step the look-ahead
        imitates (second order only; the clip factor ``min(1, clip / ||g||)`` is held constant).
        """
        with preserved_buffers(self.model) if self.freeze_buffers else contextlib.nullcontext():
            if not self.unrolled:
                grads, state = self._first_order(valid_batch, valid_state)
            elif train_batch is None or train_state is None:
                raise ValueError("the second-order (unrolled) step needs the training batch and its state")
            else:
                grads, state = self._second_order(train_batch, valid_batch, train_state, valid_state, network_lr,
                                                  network_weight_decay, network_clip)
        if self.penalty is not None:
            value = self.penalty()
            extra = _fill(torch.autograd.grad(value, self.arch_params, allow_unused=True), self.arch_params)
            grads = [g + e for g, e in zip(grads, extra)]
            self.last["penalty"] = float(value.detach())
        return grads, state

    def _first_order(self, valid_batch: Batch, valid_state: State) -> tuple[list[Tensor], State]:
        with requires_grad(self.model.weight_parameters(), False):
            loss, out = self._run(valid_batch, valid_state)
            grads = torch.autograd.grad(loss, self.arch_params, allow_unused=True)
        self.last = {"valid_loss": loss.detach().item()}
        return _fill(grads, self.arch_params), detach_state(out.state)

    def _second_order(self, train_batch: Batch, valid_batch: Batch, train_state: State, valid_state: State,
                      lr: float, wd: float, clip: float | None) -> tuple[list[Tensor], State]:
        named = self.model.named_weight_parameters()
        names, weights = [n for n, _ in named], [p for _, p in named]
        device = weights[0].device

        # Look-ahead w' = w - lr (c g + wd w): the training pass draws its masks after this snapshot.
        masks = MaskReplay(device)
        with requires_grad(self.arch_params, False):
            loss_train, _ = self._run(train_batch, train_state)
            g = _fill(torch.autograd.grad(loss_train, weights, allow_unused=True), weights)
        g_norm = _norm(g)
        coef = 1.0 if clip is None else min(1.0, clip / (g_norm + 1e-6))
        # The Hessian term's factor: the look-ahead's clip factor (exact), or DARTS's unclamped clip / ||g||.
        h_coef = clip / (g_norm + 1e-6) if self.second_order == "darts" and clip is not None else coef
        with torch.no_grad():
            w_virtual = [(w - lr * (coef * gi + wd * w)).requires_grad_() for w, gi in zip(weights, g)]

        # dalpha L_val(w', alpha) and v = dw' L_val(w', alpha) (DARTS eq. 7). The public code runs this pass on a
        # copy of the model, so its batch-norm statistics never reach the real one.
        with preserved_buffers(self.model):   # restored after the backward, which may read them
            loss_val, out_val = self._run(valid_batch, valid_state, dict(zip(names, w_virtual)))
            grads = _fill(torch.autograd.grad(loss_val, [*w_virtual, *self.arch_params], allow_unused=True),
                          [*w_virtual, *self.arch_params])
        v, g_alpha = grads[: len(weights)], grads[len(weights):]
        v_raw_norm = _norm(v)
        if self.second_order == "darts" and clip is not None:   # DARTS's _clip(dtheta, network_clip)
            v_coef = clip / (v_raw_norm + 1e-6)
            if v_coef < 1:
                v = [vi * v_coef for vi in v]

        # Finite-difference Hessian-vector product (DARTS eq. 8), same batch and masks for w+ and w-.
        v_norm = _norm(v)
        if v_norm > 0 and lr * h_coef != 0:
            R = self.fd_epsilon / v_norm
            sides = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    shifted = {n: w.detach() + sign * R * vi for n, w, vi in zip(names, weights, v)}
                with masks.replay():
                    loss_side, _ = self._run(train_batch, train_state, shifted)
                    sides.append(_fill(torch.autograd.grad(loss_side, self.arch_params, allow_unused=True),
                                       self.arch_params))
            hessian = [lr * h_coef * (gp - gm) / (2 * R) for gp, gm in zip(*sides)]
        else:
            hessian = [torch.zeros_like(ga) for ga in g_alpha]
        self.last = {"valid_loss": loss_val.detach().item(), "train_loss": loss_train.detach().item(),
                     "g_norm": g_norm, "hessian_scale": lr * h_coef,
                     "v_norm": v_raw_norm, "v_norm_used": v_norm, "direct_norm": _norm(g_alpha),
                     "hessian_norm": _norm(hessian)}
        g_alpha = [ga - h for ga, h in zip(g_alpha, hessian)]
        return g_alpha, detach_state(out_val.state)

    # ---- the step

    def step(self, train_batch: Batch | None, valid_batch: Batch, train_state: State | None, valid_state: State,
             network_lr: float = 0.0, network_weight_decay: float = 0.0,
             network_clip: float | None = None) -> State:
        """One Adam step of the architecture parameters; returns the new (detached) validation state.

        Validation batches carry their own recurrent state. First order ignores the training arguments.
        """
        grads, new_state = self.arch_gradient(train_batch, valid_batch, train_state, valid_state, network_lr,
                                              network_weight_decay, network_clip)
        for p, g in zip(self.arch_params, grads):
            p.grad = g.detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last["arch_grad_norm"] = _norm(grads)
        return new_state

    # ---- resume

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


__all__ = ["Architect", "Batch", "MaskReplay", "preserved_buffers", "requires_grad"]
