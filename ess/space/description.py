"""The one-line description of a genotype in the shared notation, read back by :func:`parse_description`."""

from __future__ import annotations

import re

from ess.errors import GenotypeError
from ess.space.genotype import IDENTITY_INTER, Edge, ESSGenotype, InterGenotype, InterNode, IntraGenotype
from ess.space.notation import node_name, source_names, state, states_from_text, states_text

SYMBOLS: dict[str, str] = {"product": "*", "sum": "+"}
_COMBINATION = {symbol: name for name, symbol in SYMBOLS.items()}
RESIDUAL = "+res"
IDENTITY = "identity"
INTER_PARTS = ("history", "input")

_TERM = r"(\w+)\(([^()\s]*)\)"
_INTRA_NODE = re.compile(rf"s(\d+)={_TERM}")
_INTER_NODE = re.compile(rf"s(\d+)={_TERM}([*+]){_TERM}")
_PART = re.compile(r"(\w+)\[([^\[\]]*)\]")
_WHOLE = re.compile(r"\s*(?:\w+\[[^\[\]]*\]\s*)+")


def _term(part: str, edge: Edge, m: int = 0) -> str:
    return f"{edge.op}({node_name(part, edge.pred, m)})"


def describe_intra(intra: IntraGenotype) -> str:
    nodes = " ".join(f"{state(i)}={_term('intra', e)}" for i, e in enumerate(intra.recurrent, start=1))
    return f"intra[{nodes} | mean({states_text(intra.concat)})]"


def describe_inter(part: str, inter: InterGenotype) -> str:
    if inter.is_identity:
        settings = [f"m={inter.m}"] * (inter.m > 1) + [inter.combination] * (inter.combination != "product")
        return f"{part}[{' '.join([IDENTITY, *settings])}]"
    symbol = SYMBOLS[inter.combination]
    nodes = [f"{state(k)}={_term(part, n.a, inter.m)}{symbol}{_term(part, n.b, inter.m)}"
             for k, n in enumerate(inter.nodes, start=1)]
    return f"{part}[{' '.join([f'm={inter.m}', *nodes, *[RESIDUAL] * inter.residual])}]"


def describe(genotype: ESSGenotype) -> str:
    """The genotype on one line, in the names of :mod:`ess.space.notation` (a part left out is the identity)::

        intra[s1=sigmoid(s0) s2=relu(s1) ... s8=relu(s5) | mean(s1..s8)]
        history[m=3 s1=relu(h_{t-1})*tanh(h_{t-2}) s2=sigmoid(s1)*identity(h_{t-3}) +res]
        input[identity]          input[identity m=2]          input[m=2 s1=relu(x_t)+tanh(x_{t-1})]

    ``*`` is the product combination, ``+`` the sum; ``+res`` the residual. An identity cell with the sum
    combination says so (``identity sum``), so that every genotype reads back as itself.
    """
    return " ".join([describe_intra(genotype.intra), describe_inter("history", genotype.history),
                     describe_inter("input", genotype.input)])


# --------------------------------------------------------------------------------------------------
# Reading it back


def looks_like_description(text: str) -> bool:
    return text.lstrip().startswith("intra[")


def _source(names: dict[str, int], name: str, where: str) -> int:
    if name not in names:
        raise GenotypeError(f"{where}: unknown source {name!r} (known here: {', '.join(names)})")
    return names[name]


def _numbered(found: str, expected: int, token: str, where: str) -> None:
    if int(found) != expected:
        raise GenotypeError(f"{where}: {token!r}: expected node s{expected} next")


def _intra_from(body: str, where: str) -> IntraGenotype:
    nodes_text, bar, mean = body.partition("|")
    mean_match = re.fullmatch(r"\s*mean\(([^()]*)\)\s*", mean)
    if not bar or not mean_match:
        raise GenotypeError(f"{where}: expected 'NODES | mean(STATES)', got {body!r}")
    edges = []
    for i, token in enumerate(nodes_text.split(), start=1):
        match = _INTRA_NODE.fullmatch(token)
        if not match:
            raise GenotypeError(f"{where}: {token!r} is not a node 's<i>=op(source)'")
        _numbered(match.group(1), i, token, where)
        edges.append(Edge(match.group(2), _source(source_names("intra", i), match.group(3), f"{where}: {token}")))
    try:
        concat = states_from_text(mean_match.group(1))
    except ValueError as err:
        raise GenotypeError(f"{where}: mean: {err}") from None
    return IntraGenotype(tuple(edges), tuple(concat))


def _inter_from(part: str, body: str, where: str) -> InterGenotype:
    tokens = body.split()
    if tokens[:1] == [IDENTITY]:
        m, combination = 1, "product"
        for token in tokens[1:]:
            if re.fullmatch(r"m=\d+", token):
                m = int(token[2:])
            elif token in SYMBOLS:
                combination = token
            else:
                raise GenotypeError(f"{where}: {token!r}: expected 'm=N' or a combination after 'identity'")
        return InterGenotype(m=m, combination=combination)
    if not tokens or not re.fullmatch(r"m=\d+", tokens[0]):
        raise GenotypeError(f"{where}: expected 'identity' or 'm=N' first, got {body!r}")
    m, residual = int(tokens[0][2:]), tokens[-1] == RESIDUAL
    nodes, symbols = [], set()
    for k, token in enumerate(tokens[1:len(tokens) - residual], start=1):
        match = _INTER_NODE.fullmatch(token)
        if not match:
            raise GenotypeError(f"{where}: {token!r} is not a node 's<k>=op(source)*op(source)'")
        _numbered(match.group(1), k, token, where)
        names = source_names(part, m + k - 1, m)
        a = Edge(match.group(2), _source(names, match.group(3), f"{where}: {token}"))
        b = Edge(match.group(5), _source(names, match.group(6), f"{where}: {token}"))
        nodes.append(InterNode(a, b))
        symbols.add(match.group(4))
    if len(symbols) > 1:
        raise GenotypeError(f"{where}: the nodes mix '*' and '+' (one combination per cell)")
    combination = _COMBINATION[symbols.pop()] if symbols else "product"
    return InterGenotype(m=m, nodes=tuple(nodes), combination=combination, residual=residual)


def parse_description(text: str, source: str = "description") -> ESSGenotype:
    """The genotype a :func:`describe` line names; a one-line :class:`GenotypeError` names what is wrong."""
    if not _WHOLE.fullmatch(text):
        raise GenotypeError(f"{source}: expected 'intra[...] history[...] input[...]'")
    parts: dict[str, str] = {}
    for match in _PART.finditer(text):
        name, body = match.groups()
        if name not in ("intra", *INTER_PARTS) or name in parts:
            raise GenotypeError(f"{source}: {'repeated' if name in parts else 'unknown'} part {name!r} "
                                "(parts: intra, history, input)")
        parts[name] = body
    if "intra" not in parts:
        raise GenotypeError(f"{source}: no intra[...] part")
    try:
        intra = _intra_from(parts["intra"], f"{source}: intra")
        inters = [_inter_from(p, parts[p], f"{source}: {p}") if p in parts else IDENTITY_INTER for p in INTER_PARTS]
    except GenotypeError as err:
        message = str(err)
        raise GenotypeError(message if message.startswith(source) else f"{source}: {message}") from None
    return ESSGenotype(intra=intra, history=inters[0], input=inters[1])


__all__ = ["describe", "describe_inter", "describe_intra", "looks_like_description", "parse_description"]
