"""Genotypes: JSON round trips, one-line errors that name the field, built-ins, drawing and the CLI."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ess.errors import ESSError, GenotypeError
from ess.space.__main__ import main as cli_main
from ess.space.description import describe, parse_description
from ess.space.draw import draw_genotype, output_paths, render_genotype
from ess.space.genotype import (
    BUILTINS,
    DARTS_V1,
    DARTS_V2,
    ENAS,
    IDENTITY_INTER,
    Edge,
    ESSGenotype,
    InterGenotype,
    InterNode,
    IntraGenotype,
    genotype_from_dict,
    parse_genotype_json,
    save_genotype,
)
from ess.space.ops import PRIMITIVES
from ess.space.refs import load_genotype

REPO = Path(__file__).resolve().parents[2]


def _inter(combination: str = "product", residual: bool = True) -> InterGenotype:
    """A hand-built inter cell: m = 3 inputs and 3 nodes, the last one reading the first two."""
    return InterGenotype(
        m=3,
        nodes=(InterNode(Edge("relu", 0), Edge("tanh", 1)),
               InterNode(Edge("sigmoid", 3), Edge("identity", 2)),
               InterNode(Edge("tanh", 4), Edge("relu", 3))),
        combination=combination, residual=residual)


ESS_SAMPLE = ESSGenotype(DARTS_V2.intra, history=_inter("product", True), input=_inter("sum", False))


# --------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_json_round_trip(name: str, tmp_path: Path) -> None:
    genotype = BUILTINS[name]
    assert parse_genotype_json(genotype.to_json()) == genotype
    assert ESSGenotype.from_dict(json.loads(genotype.to_json(indent=None))) == genotype
    path = save_genotype(genotype, tmp_path / f"{name}.json")
    assert path == tmp_path / f"{name}.json"
    assert load_genotype(path) == genotype
    assert load_genotype(str(path)) == genotype


def test_identity_inter_round_trips() -> None:
    for inter in (IDENTITY_INTER, InterGenotype(m=3)):
        genotype = ESSGenotype(DARTS_V1.intra, history=inter, input=inter)
        back = parse_genotype_json(genotype.to_json())
        assert back == genotype
        assert back.history.is_identity and back.input.is_identity
        assert back.history.m == inter.m
    assert ESSGenotype(DARTS_V1.intra) == DARTS_V1  # the inter cells default to the identity


@pytest.mark.parametrize("combination", ["product", "sum"])
@pytest.mark.parametrize("residual", [True, False])
def test_hand_built_inter_round_trips(combination: str, residual: bool, tmp_path: Path) -> None:
    inter = _inter(combination, residual)
    genotype = ESSGenotype(ENAS.intra, history=inter, input=_inter())
    data = genotype.to_dict()
    assert data["history"]["m"] == 3
    assert data["history"]["combination"] == combination
    assert data["history"]["residual"] is residual
    assert data["history"]["nodes"][1] == {"a": ["sigmoid", 3], "b": ["identity", 2]}
    assert genotype_from_dict(data) == genotype
    assert load_genotype(save_genotype(genotype, tmp_path / "g.json")) == genotype
    assert not genotype.history.is_identity


def test_json_defaults_for_optional_fields() -> None:
    data = {"intra": {"recurrent": [["tanh", 0], ["relu", 1]]},
            "history": {"m": 2, "nodes": [{"a": ["relu", 0], "b": ["relu", 1]}]}}
    genotype = genotype_from_dict(data)
    assert genotype.intra.concat == (1, 2)
    assert genotype.history.combination == "product" and genotype.history.residual is True
    assert genotype.input == IDENTITY_INTER


def test_edges_unpack_like_darts_tuples() -> None:
    assert [tuple(e) for e in DARTS_V2.intra.recurrent][:2] == [("sigmoid", 0), ("relu", 1)]
    assert IntraGenotype((("tanh", 0),), (1,)) == IntraGenotype((Edge("tanh", 0),), (1,))
    assert InterGenotype(m=1, nodes=((("relu", 0), ("tanh", 0)),)).nodes[0] == InterNode(Edge("relu", 0),
                                                                                           Edge("tanh", 0))


def test_describe_is_one_line_in_the_pictures_notation() -> None:
    text = describe(ESS_SAMPLE)
    assert "\n" not in text
    assert text.startswith("intra[s1=sigmoid(s0) s2=relu(s1) ")
    assert "| mean(s1..s8)]" in text
    assert "history[m=3 s1=relu(h_{t-1})*tanh(h_{t-2}) s2=sigmoid(s1)*identity(h_{t-3}) s3=tanh(s2)*relu(s1) +res]" \
        in text
    assert text.endswith("input[m=3 s1=relu(x_t)+tanh(x_{t-1}) s2=sigmoid(s1)+identity(x_{t-2}) s3=tanh(s2)+relu(s1)]")
    assert describe(DARTS_V2).endswith("history[identity] input[identity]")
    assert "history[identity m=3]" in describe(ESSGenotype(DARTS_V2.intra, InterGenotype(m=3)))
    assert "| mean(s2, s5, s6, s9..s11)]" in describe(ENAS)


# --------------------------------------------------------------------------------------------------
# Built-ins (reference.md section 3; ENAS as in the DARTS code)


def test_builtins_match_reference() -> None:
    assert [tuple(e) for e in DARTS_V1.intra.recurrent] == [
        ("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3), ("relu", 4), ("identity", 1), ("relu", 5), ("relu", 1)]
    assert [tuple(e) for e in DARTS_V2.intra.recurrent] == [
        ("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1), ("tanh", 2), ("sigmoid", 5), ("tanh", 3),
        ("relu", 5)]
    assert [tuple(e) for e in ENAS.intra.recurrent] == [
        ("tanh", 0), ("tanh", 1), ("relu", 1), ("tanh", 3), ("tanh", 3), ("relu", 3), ("relu", 4), ("relu", 7),
        ("relu", 8), ("relu", 8), ("relu", 8)]
    assert DARTS_V1.intra.concat == DARTS_V2.intra.concat == (1, 2, 3, 4, 5, 6, 7, 8)
    assert ENAS.intra.concat == (2, 5, 6, 9, 10, 11)
    for genotype in BUILTINS.values():
        assert genotype.history == genotype.input == IDENTITY_INTER
    assert set(BUILTINS) == {"DARTS_V1", "DARTS_V2", "ENAS"}


@pytest.mark.parametrize("name", ["darts_v2", "DARTS_V2", "Darts_V2"])
def test_load_builtin_case_insensitive(name: str) -> None:
    assert load_genotype(name) is DARTS_V2


def test_load_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(GenotypeError, match="no such genotype file and not a built-in") as info:
        load_genotype(missing)
    assert str(missing) in str(info.value) and "DARTS_V2" in str(info.value)


def test_load_directory_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(GenotypeError, match="cannot read genotype"):
        load_genotype(tmp_path)
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"intra": "\xe9"}')
    with pytest.raises(GenotypeError, match="cannot read genotype"):
        load_genotype(bad)


# --------------------------------------------------------------------------------------------------
# Malformed genotypes: one-line GenotypeError naming the field (and the file)


def _valid_dict() -> dict[str, Any]:
    return ESS_SAMPLE.to_dict()


def _set(path: tuple, value: Any):
    def mutate(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _pop(path: tuple):
    def mutate(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return mutate


MALFORMED = {
    "unknown op": (_set(("intra", "recurrent", 2), ["gelu", 1]), "intra.recurrent[2].op: unknown op 'gelu'"),
    "zero op": (_set(("intra", "recurrent", 0), ["none", 0]), "intra.recurrent[0].op: 'none'"),
    "inter unknown op": (_set(("history", "nodes", 0, "a"), ["swish", 0]), "history.nodes[0].a.op: unknown op"),
    "inter zero op": (_set(("input", "nodes", 2, "b"), ["none", 0]), "input.nodes[2].b.op: 'none'"),
    "intra pred too large": (_set(("intra", "recurrent", 2), ["relu", 3]),
                             "intra.recurrent[2].pred: predecessor 3 out of range 0..2"),
    "intra pred negative": (_set(("intra", "recurrent", 4), ["relu", -1]),
                            "intra.recurrent[4].pred: predecessor -1 out of range"),
    "inter pred too large": (_set(("history", "nodes", 0, "b"), ["relu", 3]),
                             "history.nodes[0].b.pred: predecessor 3 out of range 0..2"),
    "inter pred negative": (_set(("input", "nodes", 1, "a"), ["relu", -2]),
                            "input.nodes[1].a.pred: predecessor -2 out of range"),
    "float pred": (_set(("intra", "recurrent", 1), ["relu", 1.0]), "intra.recurrent[1].pred: expected an integer"),
    "string pred": (_set(("history", "nodes", 0, "a"), ["relu", "0"]), "history.nodes[0].a.pred: expected an integer"),
    "bool pred": (_set(("intra", "recurrent", 1), ["relu", True]), "intra.recurrent[1].pred: expected an integer"),
    "edge not a pair": (_set(("intra", "recurrent", 1), ["relu"]), "intra.recurrent[1]: expected an [op, predecessor]"),
    "inter edge not a pair": (_set(("history", "nodes", 0, "a"), "relu"), "history.nodes[0].a: expected an [op"),
    "empty recurrent": (_set(("intra", "recurrent"), []), "intra.recurrent: wrong node count"),
    "recurrent not a list": (_set(("intra", "recurrent"), {"a": 1}), "intra.recurrent: expected a list"),
    "concat out of range": (_set(("intra", "concat"), [1, 9]), "intra.concat[1]: node 9 out of range 1..8"),
    "concat zero": (_set(("intra", "concat"), [0]), "intra.concat[0]: node 0 out of range"),
    "concat empty": (_set(("intra", "concat"), []), "intra.concat: wrong node count"),
    "concat repeated": (_set(("intra", "concat"), [1, 1]), "intra.concat: a node is listed twice"),
    "inter without nodes and residual": (_set(("input", "nodes"), []), "input.nodes: wrong node count"),
    "m zero": (_set(("history", "m"), 0), "history.m: expected an integer >= 1, got 0"),
    "m negative": (_set(("input", "m"), -3), "input.m: expected an integer >= 1"),
    "m not an integer": (_set(("history", "m"), "3"), "history.m: expected an integer"),
    "m too small for preds": (_set(("history", "m"), 1), "history.nodes[0].b.pred: predecessor 1 out of range 0..0"),
    "unknown combination": (_set(("history", "combination"), "max"), "history.combination: unknown 'max'"),
    "residual not bool": (_set(("history", "residual"), "yes"), "history.residual: expected true or false"),
    "unknown top field": (_set(("genotype",), 1), "top level: unknown field 'genotype'"),
    "unknown intra field": (_set(("intra", "steps"), 8), "intra: unknown field 'steps'"),
    "unknown inter field": (_set(("history", "n"), 3), "history: unknown field 'n'"),
    "unknown node field": (_set(("history", "nodes", 0, "c"), ["relu", 0]), "history.nodes[0]: unknown field 'c'"),
    "missing intra": (_pop(("intra",)), "top level: missing field 'intra'"),
    "missing recurrent": (_pop(("intra", "recurrent")), "intra: missing field 'recurrent'"),
    "missing m": (_pop(("history", "m")), "history: missing field 'm'"),
    "missing nodes": (_pop(("input", "nodes")), "input: missing field 'nodes'"),
    "missing branch": (_pop(("history", "nodes", 1, "b")), "history.nodes[1]: missing field 'b'"),
    "intra not an object": (_set(("intra",), [["relu", 0]]), "intra: expected an object, got an array"),
    "inter not an object": (_set(("history",), None), "history: expected an object, got null"),
    "node not an object": (_set(("history", "nodes", 0), ["relu", 0]), "history.nodes[0]: expected an object"),
    "nodes not a list": (_set(("history", "nodes"), {}), "history.nodes: expected a list"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_dict_names_the_field(case: str) -> None:
    mutate, expected = MALFORMED[case]
    data = _valid_dict()
    mutate(data)
    with pytest.raises(GenotypeError) as info:
        genotype_from_dict(data, "cell.json")
    message = str(info.value)
    assert message.startswith("cell.json: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("case", ["unknown op", "inter pred too large", "missing m", "unknown combination"])
def test_malformed_file_names_the_file_and_field(case: str, tmp_path: Path) -> None:
    mutate, expected = MALFORMED[case]
    data = _valid_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("{", "not valid JSON (line 1, column 2"),
    ("", "not valid JSON"),
    ("intra: []", "not valid JSON"),
    ("1" * 5000, "not valid JSON"),
    ("[" * 100_000, "not valid JSON"),
    ("[1, 2]", "top level: expected an object, got an array"),
    ("null", "top level: expected an object, got null"),
    ('"DARTS_V2"', "top level: expected an object, got a string"),
])
def test_not_json_or_not_an_object(text: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(GenotypeError) as info:
        parse_genotype_json(text, "g.json")
    assert str(info.value).startswith("g.json: ") and expected in str(info.value)
    path = tmp_path / "g.json"
    path.write_text(text)
    with pytest.raises(GenotypeError, match=f"^{path}: "):
        load_genotype(path)


def test_long_values_are_cut_in_messages() -> None:
    data = _valid_dict()
    data["intra"]["recurrent"][0] = ["x" * 10_000, 0]
    with pytest.raises(GenotypeError) as info:
        genotype_from_dict(data)
    assert len(str(info.value)) < 300


def test_direct_construction_validates() -> None:
    with pytest.raises(GenotypeError, match=r"intra.recurrent\[0\]: expected an \(op, predecessor\) pair"):
        IntraGenotype((("relu", 0, 1),), (1,))
    with pytest.raises(GenotypeError, match="intra.recurrent: expected a sequence"):
        IntraGenotype(5, (1,))
    with pytest.raises(GenotypeError, match=r"nodes\[0\]: expected an InterNode"):
        InterGenotype(m=2, nodes=(1,))
    with pytest.raises(GenotypeError, match=r"nodes\[0\].b.op: unknown op"):
        InterGenotype(m=2, nodes=((("relu", 0), ("bad", 1)),))
    with pytest.raises(GenotypeError, match="m: expected an integer >= 1"):
        InterGenotype(m=True)
    with pytest.raises(GenotypeError, match="intra: expected an IntraGenotype"):
        ESSGenotype(None)  # type: ignore[arg-type]
    with pytest.raises(GenotypeError, match="history: expected an InterGenotype"):
        ESSGenotype(DARTS_V2.intra, history={"m": 1})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Property tests


_KEYS = ["intra", "history", "input", "recurrent", "concat", "m", "nodes", "combination", "residual", "a", "b"]
_ATOMS = (st.none() | st.booleans() | st.integers(-3, 12) | st.floats(allow_nan=True)
          | st.text(max_size=6) | st.sampled_from(list(PRIMITIVES) + ["product", "sum", "gelu"]))
JSON_LIKE = st.recursive(
    _ATOMS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=4) | st.integers(0, 3), children, max_size=4),
    max_leaves=24)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into the nested lists and dicts of ``value``."""
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += _paths(item, prefix + (index,))
    return paths


@st.composite
def mutated_genotype_dicts(draw) -> Any:
    """A valid genotype dict with one to three random edits: a value replaced, an entry dropped or added."""
    data = copy.deepcopy(draw(st.sampled_from([g.to_dict() for g in (*BUILTINS.values(), ESS_SAMPLE)])))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)))
        if not path:
            continue
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        plausible = st.sampled_from(list(PRIMITIVES) + ["gelu"]) | st.integers(-2, 12) | JSON_LIKE
        if action == "replace":
            parent[path[-1]] = draw(plausible)
        elif action == "drop":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(_KEYS) | st.text(max_size=4))] = draw(plausible)
        else:
            parent.insert(draw(st.integers(0, len(parent))), draw(plausible))
    return data


def _parse_or_error(data: Any) -> ESSGenotype | None:
    """Parse ``data``; only a one-line GenotypeError may escape as a failure (returned as None)."""
    try:
        genotype = genotype_from_dict(data, "prop")
    except GenotypeError as err:
        assert "\n" not in str(err) and str(err).startswith("prop: ")
        return None
    assert isinstance(genotype, ESSGenotype)
    assert parse_genotype_json(genotype.to_json()) == genotype
    assert genotype_from_dict(genotype.to_dict()) == genotype
    return genotype


_FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(JSON_LIKE)
def test_random_json_parses_or_raises_genotype_error(data: Any) -> None:
    _parse_or_error(data)


@_FAST
@given(mutated_genotype_dicts())
def test_mutated_genotypes_parse_or_raise_genotype_error(data: Any) -> None:
    _parse_or_error(data)


@st.composite
def valid_genotypes(draw) -> ESSGenotype:
    ops = st.sampled_from([op for op in PRIMITIVES if op != "none"])
    steps = draw(st.integers(1, 10))
    recurrent = tuple(Edge(draw(ops), draw(st.integers(0, i - 1))) for i in range(1, steps + 1))
    concat = tuple(draw(st.lists(st.integers(1, steps), min_size=1, max_size=steps, unique=True)))

    def inter() -> InterGenotype:
        m = draw(st.integers(1, 4))
        count = draw(st.integers(0, 4))
        nodes = tuple(InterNode(Edge(draw(ops), draw(st.integers(0, m + k - 1))),
                                Edge(draw(ops), draw(st.integers(0, m + k - 1)))) for k in range(count))
        residual = True if not nodes else draw(st.booleans())
        return InterGenotype(m, nodes, draw(st.sampled_from(["product", "sum"])), residual)

    return ESSGenotype(IntraGenotype(recurrent, concat), inter(), inter())


@_FAST
@given(valid_genotypes())
def test_valid_genotypes_round_trip(genotype: ESSGenotype) -> None:
    assert _parse_or_error(json.loads(genotype.to_json())) == genotype
    assert "\n" not in describe(genotype)
    assert parse_description(describe(genotype)) == genotype == load_genotype(describe(genotype))
    assert hash(genotype) == hash(parse_genotype_json(genotype.to_json(indent=None)))


# --------------------------------------------------------------------------------------------------
# Drawing


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) >= 10_000


def _check_svg(path: Path, words: set[str]) -> None:
    root = ET.fromstring(path.read_bytes())
    assert root.tag.endswith("svg")
    text = " ".join(t for t in root.itertext())
    for word in words:
        assert word in text, word


@pytest.mark.parametrize("name", ["DARTS_V2", "ENAS", "ESS"])
def test_draw_writes_png_and_svg(name: str, tmp_path: Path) -> None:
    genotype = ESS_SAMPLE if name == "ESS" else BUILTINS[name]
    written = draw_genotype(genotype, tmp_path / "cell", title=name)
    assert written == [tmp_path / "cell.png", tmp_path / "cell.svg"]
    _check_png(written[0])
    ops = {e.op for e in genotype.intra.recurrent}
    words = ops | {name}
    if name == "ESS":
        words |= {"a: relu", "b: tanh", "a: sigmoid", "b: identity", "residual"}
    _check_svg(written[1], words)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file behind


def test_draw_by_suffix_and_formats(tmp_path: Path) -> None:
    assert draw_genotype(DARTS_V1, tmp_path / "a.png") == [tmp_path / "a.png"]
    _check_png(tmp_path / "a.png")
    assert draw_genotype(DARTS_V1, tmp_path / "b.SVG") == [tmp_path / "b.SVG"]
    _check_svg(tmp_path / "b.SVG", {"relu", "identity"})
    assert not (tmp_path / "b.png").exists()
    assert draw_genotype(DARTS_V1, tmp_path / "c.png", formats=("png", "svg")) == [
        tmp_path / "c.png", tmp_path / "c.svg"]


def test_output_paths() -> None:
    assert output_paths(Path("x/cell"), None) == [(Path("x/cell.png"), "png"), (Path("x/cell.svg"), "svg")]
    assert output_paths(Path("cell.svg"), None) == [(Path("cell.svg"), "svg")]
    assert output_paths(Path("cell.v2"), ["svg"]) == [(Path("cell.v2.svg"), "svg")]
    with pytest.raises(ESSError, match="unsupported drawing format '.pdf'"):
        output_paths(Path("cell.pdf"), None)
    with pytest.raises(ESSError, match="unsupported drawing format 'jpg'"):
        output_paths(Path("cell"), ["jpg"])


def test_render_identity_m3_and_single_node() -> None:
    genotype = ESSGenotype(IntraGenotype((Edge("tanh", 0),), (1,)), InterGenotype(m=3),
                           InterGenotype(m=2, nodes=(InterNode(Edge("relu", 1), Edge("relu", 1)),), residual=False))
    svg = render_genotype(genotype, "svg").decode()
    assert "identity" in svg and "a: relu" in svg and "b: relu" in svg
    with pytest.raises(GenotypeError, match="expected an ESSGenotype"):
        render_genotype(DARTS_V2.intra, "png")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Command line


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ess.space", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_cli_show_writes_the_drawing(tmp_path: Path) -> None:
    result = _run_cli("show", "darts_v2", "--out", str(tmp_path / "cell.png"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [describe(DARTS_V2), str(tmp_path / "cell.png")]
    _check_png(tmp_path / "cell.png")


def test_cli_validate_bad_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"intra": {"recurrent": [["relu", 5]]}}')
    result = _run_cli("validate", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {bad}: intra.recurrent[0].pred: predecessor 5 out of range 0..0"]


def test_cli_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == list(BUILTINS)

    target = tmp_path / "enas.json"
    assert cli_main(["export", "enas", "--out", str(target)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert load_genotype(target) == ENAS

    assert cli_main(["export", "DARTS_V1"]) == 0
    assert parse_genotype_json(capsys.readouterr().out) == DARTS_V1

    assert cli_main(["validate", str(target)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {target}: intra[s1=tanh(s0) s2=tanh(s1)")

    assert cli_main(["show", str(target)]) == 0
    assert capsys.readouterr().out.strip() == describe(ENAS)

    for argv in (["validate", str(tmp_path / "missing.json")], ["show", "enas", "--out", str(tmp_path / "x.pdf")],
                 ["export", "nope"]):
        assert cli_main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert len(captured.err.splitlines()) == 1 and captured.err.startswith("error: ")
    assert not (tmp_path / "x.pdf").exists()


def test_load_genotype_is_the_one_resolver_of_every_reference(tmp_path):
    """An ESSGenotype, a built-in name in any case, JSON text or a file: one function, one case rule."""
    from ess.space.genotype import builtin_name

    genotype = ESSGenotype(DARTS_V2.intra, history=InterGenotype(2, (InterNode(Edge("relu", 0), Edge("tanh", 1)),)))
    assert load_genotype(genotype) is genotype
    for name in ("DARTS_V2", "darts_v2", " Darts_V2 "):
        assert builtin_name(name) == "DARTS_V2" and load_genotype(name) == DARTS_V2
    assert builtin_name("my_cell.json") is None and builtin_name(genotype) is None
    assert load_genotype(genotype.to_json()) == genotype and load_genotype("  " + genotype.to_json(None)) == genotype
    assert load_genotype(save_genotype(genotype, tmp_path / "g.json")) == genotype
    with pytest.raises(GenotypeError, match=r"^genotype JSON text: not valid JSON"):
        load_genotype('{"intra": ')
    with pytest.raises(GenotypeError, match=r"no such genotype file and not a built-in"):
        load_genotype("DARTS_V9")
