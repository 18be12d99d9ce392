"""Which validation tokens serve which role: searching (architecture, ranking) or selecting among searches.

The tokens that fit the architecture weights or rank genotypes inside a search must never be the ones that
choose among searches or retrains, and neither may report the result. The validation split is therefore cut
in two contiguous halves:

* ``search``: the first half. A search fits its architecture weights on it (DARTS's architecture batches),
  scores its supernet and its epochs on it and ranks genotypes on it (RSWS, ``--derive rank``, perturbation
  selection). PTB: the first 36,880 of its 73,760 validation tokens.
* ``select``: the second half. A retrain's validation (its best epoch, the ASGD trigger, the perplexity the jobs
  choose among genotypes by) reads it when the retrain follows a search. PTB: the last 36,880 tokens.
* ``all``: the whole split, for a retrain on its own (DARTS's published validation perplexities are on it).

The test split reports, and chooses nothing. ``max_eval_tokens`` then caps a part from its start.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ess.errors import ConfigError

#: each part's ``[start, stop)`` in a split of ``n`` tokens
VALID_PARTS: dict[str, Callable[[int], tuple[int, int]]] = {
    "all": lambda n: (0, n), "search": lambda n: (0, n // 2), "select": lambda n: (n // 2, n)}


def valid_part(tokens: torch.Tensor, part: str) -> torch.Tensor:
    """The ``part`` (:data:`VALID_PARTS`) of a validation token stream: a contiguous slice; ``search`` and
    ``select`` never share a token and together are the whole."""
    if part not in VALID_PARTS:
        raise ConfigError(f"valid_part: unknown {part!r} (known: {', '.join(VALID_PARTS)})")
    start, stop = VALID_PARTS[part](tokens.size(0))
    return tokens[start:stop]


__all__ = ["VALID_PARTS", "valid_part"]
