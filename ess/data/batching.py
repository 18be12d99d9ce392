"""Batching of a token stream for truncated back-propagation through time (AWD-LSTM / DARTS).

``batchify`` lays a 1-D id stream out as ``batch_size`` parallel columns; ``get_batch`` cuts
``seq_len`` rows out of it with next-token targets; :class:`BPTTIterator` walks the whole
stream with DARTS' randomised sequence lengths (or a fixed length for evaluation) and can be
checkpointed and resumed exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ess.errors import CheckpointError, DataError


def batchify(data: torch.Tensor, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Reshape a 1-D token stream into a ``[tokens, batch_size]`` LongTensor.

    As in DARTS/AWD-LSTM ``utils.batchify``: the remainder that does not fill a whole row is
    trimmed, then ``data.view(bsz, -1).t().contiguous()``, so column ``b`` holds the ``b``-th
    contiguous chunk of the stream. The result is always a new tensor.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if data.dim() != 1:
        raise ValueError(f"batchify expects a 1-D token stream, got shape {tuple(data.shape)}")
    rows = data.size(0) // batch_size
    if rows < 2:
        raise DataError(f"a stream of {data.size(0):,} tokens is too short for batch size {batch_size}")
    # clone (not .contiguous(), a no-op for batch_size 1) so the result never aliases a cached corpus
    out = data.narrow(0, 0, rows * batch_size).view(batch_size, -1).t().clone(memory_format=torch.contiguous_format)
    out = out.long()
    return out.to(device) if device is not None else out


def get_batch(source: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``source[i:i+L]`` and targets ``source[i+1:i+1+L]`` with ``L = min(seq_len, len(source)-1-i)``.

    The targets are the inputs shifted by one token, both ``[L, batch]`` (DARTS ``utils.get_batch``).
    """
    seq_len = min(seq_len, len(source) - 1 - i)
    if seq_len < 1:
        raise IndexError(f"position {i} leaves no targets in a source of {len(source)} rows")
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len]


def num_tokens(source: torch.Tensor) -> int:
    """Number of predicted tokens in a batchified source, ``(rows - 1) * batch``: one full pass's loss count."""
    rows = source.size(0)
    batch = source.size(1) if source.dim() > 1 else 1
    return max(rows - 1, 0) * batch


class BPTTIterator:
    """Iterate ``(data, targets, seq_len)`` over a batchified source, covering every target once.

    With ``random_length=True`` (training), each length follows the DARTS/AWD-LSTM rule::

        base = bptt if U(0,1) < 0.95 else bptt / 2
        seq_len = max(min_seq_len, int(N(base, 5)))
        seq_len = min(seq_len, bptt + max_seq_len_delta)

    and is then cut to the data left; with ``length_noise=False`` the normal draw is skipped,
    ``seq_len = int(base)`` (DARTS's search loop: 35, or 17). With ``random_length=False`` (evaluation) every batch has
    ``bptt`` rows except possibly the last. All randomness comes from ``generator`` (one created
    from the global torch RNG when None), never from global state, so restoring
    ``generator.get_state()`` and :meth:`load_state_dict` resumes the exact same batches.

    The loop runs while ``i < len(source) - 1``, so the final target row is always used
    (DARTS' training loop stops at ``len - 2`` and can drop it); the yielded ``seq_len`` is the
    length actually returned, after that cut.
    """

    def __init__(self, source: torch.Tensor, bptt: int = 35, *, random_length: bool = True,
                 generator: torch.Generator | None = None, max_seq_len_delta: int = 20,
                 min_seq_len: int = 5, length_noise: bool = True) -> None:
        if bptt < 1:
            raise ValueError(f"bptt must be >= 1, got {bptt}")
        if min_seq_len < 1 or min_seq_len > bptt + max_seq_len_delta:
            raise ValueError(f"min_seq_len must be in [1, bptt + max_seq_len_delta], got {min_seq_len}")
        self.source = source
        self.bptt = bptt
        self.random_length = random_length
        self.length_noise = length_noise
        self.max_seq_len_delta = max_seq_len_delta
        self.min_seq_len = min_seq_len
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        self.generator = generator
        self.i = 0
        self.batches = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.i >= len(self.source) - 1:
            raise StopIteration
        seq_len = self.draw_seq_len() if self.random_length else self.bptt
        data, targets = get_batch(self.source, self.i, seq_len)
        self.i += len(data)
        self.batches += 1
        return data, targets, len(data)

    def draw_seq_len(self) -> int:
        """One DARTS sequence length, before the cut to the remaining data."""
        base = self.bptt if torch.rand((), generator=self.generator).item() < 0.95 else self.bptt / 2.0
        if not self.length_noise:
            return int(base)
        seq_len = max(self.min_seq_len, int(base + 5.0 * torch.randn((), generator=self.generator).item()))
        return min(seq_len, self.bptt + self.max_seq_len_delta)

    @property
    def done(self) -> bool:
        return self.i >= len(self.source) - 1

    def reset(self) -> None:
        """Start a new pass over the source (the generator carries on)."""
        self.i = 0
        self.batches = 0

    def state_dict(self) -> dict[str, Any]:
        """Position and batch count; save ``generator.get_state()`` alongside to resume exactly."""
        return {"i": self.i, "batches": self.batches, "rows": len(self.source)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` taken on an iterator over a source of the same length."""
        try:
            i, batches, rows = int(state["i"]), int(state["batches"]), int(state["rows"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"BPTT iterator state is malformed ({err!r})") from None
        if rows != len(self.source):
            raise CheckpointError(
                f"BPTT iterator state is for a source of {rows} rows, this one has {len(self.source)} "
                "(different corpus or batch size?)"
            )
        if not 0 <= i <= rows or batches < 0:
            raise CheckpointError(f"BPTT iterator state has an invalid position i={i}, batches={batches}")
        self.i, self.batches = i, batches
