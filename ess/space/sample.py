"""Random genotypes drawn uniformly from the search space: the random-search baseline's candidates.

Li and Talwalkar (2019) found random search competitive with DARTS on PTB, so a differentiable search
is only worth its cost if it beats genotypes drawn at random from the same space. A draw here follows the
supernet's own space: each intra node takes a predecessor uniformly among the earlier nodes and an op
uniformly among the intra candidates other than ``none``; each inter node's two branches take a source
uniformly among the inputs and earlier nodes and an op among the inter candidates other than ``none``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ess.space.genotype import IDENTITY_INTER, Edge, ESSGenotype, InterGenotype, InterNode, IntraGenotype
from ess.space.ops import PRIMITIVES, ZERO


def random_genotype(rng: random.Random, *, steps: int = 8, m: int = 3, n_inter: int = 3,
                    intra_ops: Sequence[str] = PRIMITIVES, inter_ops: Sequence[str] = PRIMITIVES,
                    searched: Sequence[str] = ("intra", "history", "input"),
                    fixed_intra: IntraGenotype | None = None, combination: str = "product") -> ESSGenotype:
    """One genotype of the space, drawn with ``rng``; parts not in ``searched`` are fixed (DARTS's rules)."""
    intra_choices = [op for op in intra_ops if op != ZERO]
    inter_choices = [op for op in inter_ops if op != ZERO]
    if "intra" in searched:
        intra = IntraGenotype(tuple(Edge(rng.choice(intra_choices), rng.randrange(i)) for i in range(1, steps + 1)),
                              tuple(range(1, steps + 1)))
    elif fixed_intra is not None:
        intra = fixed_intra
    else:
        raise ValueError("the intra cell is not searched: give fixed_intra")

    def inter(part: str) -> InterGenotype:
        if part not in searched:
            return IDENTITY_INTER
        nodes = tuple(InterNode(*(Edge(rng.choice(inter_choices), rng.randrange(m + k)) for _ in "ab"))
                      for k in range(n_inter))
        return InterGenotype(m=m, nodes=nodes, combination=combination, residual=True)

    return ESSGenotype(intra, inter("history"), inter("input"))


def random_genotypes(seed: int, k: int, **space) -> list[ESSGenotype]:
    """``k`` distinct draws with a ``random.Random(seed)`` (the same seed gives the same list)."""
    rng, out = random.Random(seed), []
    for _ in range(100 * k):
        g = random_genotype(rng, **space)
        if g not in out:
            out.append(g)
        if len(out) == k:
            return out
    raise ValueError(f"the space has fewer than {k} distinct genotypes")


__all__ = ["random_genotype", "random_genotypes"]
