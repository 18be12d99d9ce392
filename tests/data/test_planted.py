"""The planted-structure corpus: exact entropy rate, sampler, floor, determinism, registration, CLI, search."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ess.data import (
    CORPORA,
    EOS,
    PlantedParams,
    batchify,
    clear_corpus_cache,
    corpus_dir,
    get_batch,
    load_corpus,
    tokenize,
    verify_corpus,
)
from ess.data.__main__ import main as cli_main
from ess.data.generated import write_generated
from ess.data.planted import (
    chance_of_reaching,
    conditional_probabilities,
    decode_ids,
    entropy_rate,
    exact_log_probs,
    next_distribution,
    planted_lag_edges,
    reaches_planted_input,
    regimes_and_lags,
    sample_split,
    split_text,
    target_table,
    varentropy,
)
from ess.errors import ConfigError
from ess.space.genotype import DARTS_V2, ESSGenotype, InterGenotype
from ess.space.sample import random_genotype

from corpus_files import SMALL

DEFAULT = PlantedParams()


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """The registered ``planted`` corpus, generated once for the module into its own ESS_GENERATED_DIR."""
    root = tmp_path_factory.mktemp("generated")
    assert write_generated(CORPORA["planted"].generator, "planted", root / f"planted-{DEFAULT.fingerprint()}")
    return root


@pytest.fixture(autouse=True)
def _generated_dir(generated, monkeypatch):
    monkeypatch.setenv("ESS_GENERATED_DIR", str(generated))
    yield
    clear_corpus_cache()


def _manifest(name: str = "planted") -> dict:
    return json.loads((corpus_dir(name) / "planted.json").read_text())


# --------------------------------------------------------------------------- the exact entropy rate


@pytest.mark.parametrize("params", [
    PlantedParams(k=1, switches=2, content=3, eps=0.3, p_switch=0.4),
    PlantedParams(k=2, switches=2, content=2, eps=0.5, p_switch=0.3),
    PlantedParams(k=3, switches=3, content=2, eps=0.0, p_switch=0.5),
    PlantedParams(k=2, switches=1, content=4, eps=1.0, p_switch=0.2),
])
def test_entropy_rate_matches_brute_force_enumeration(params):
    """Every sequence of length T, by the chain rule of the definition: H(X_1..X_T) = T H, and every prefix's
    next-token entropy (and loss variance) is H (and V): the closed form is exact from the first token on."""
    T, V = 5, params.vocab_size
    table = target_table(params)
    h, var = entropy_rate(params), varentropy(params)
    total, joint_entropy = 0.0, 0.0
    for seq in itertools.product(range(V), repeat=T):
        prob = 1.0
        for t in range(T):
            prob *= next_distribution(params, seq[:t], table)[seq[t]]
        if prob > 0:
            total += prob
            joint_entropy -= prob * math.log(prob)
    assert total == pytest.approx(1.0, abs=1e-12)
    assert joint_entropy == pytest.approx(T * h, rel=1e-10)
    for t in range(T):
        for prefix in itertools.product(range(V), repeat=t):
            dist = next_distribution(params, prefix, table)
            nz = dist[dist > 0]
            assert -(nz * np.log(nz)).sum() == pytest.approx(h, rel=1e-10)
            assert (nz * (np.log(nz) + h) ** 2).sum() == pytest.approx(var, rel=1e-9)
    assert sum(p * n for p, n in conditional_probabilities(params)) == pytest.approx(1.0)


def test_vectorised_exact_model_equals_the_definition():
    ids = sample_split(SMALL, "valid")
    table = target_table(SMALL)
    logp = exact_log_probs(SMALL, ids, table)
    for t in range(0, len(ids), 7):
        assert logp[t] == pytest.approx(math.log(next_distribution(SMALL, ids[:t].tolist(), table)[ids[t]]), rel=1e-12)


def test_default_numbers():
    """The documented defaults: H = 0.9107 nats = 1.3139 bits, floor 2.486."""
    h = entropy_rate(DEFAULT)
    assert h == pytest.approx(0.910745, abs=1e-6)
    assert h / math.log(2) == pytest.approx(1.313927, abs=1e-6) and math.exp(h) == pytest.approx(2.48617, abs=1e-5)


# --------------------------------------------------------------------------- the sampler and the floor


def test_empirical_conditional_entropy_matches_the_exact_rate():
    """Plug-in H(x_t | z_t, x_{t-k}) on the 200k-token train sample, Miller-Madow corrected, lies within
    4 standard errors sqrt(V/N) (about 0.017 nats) of the exact rate; the uncorrected plug-in lies below it."""
    ids = sample_split(DEFAULT, "train")
    z, lag = regimes_and_lags(DEFAULT, ids)
    V, N = DEFAULT.vocab_size, len(ids)
    context = z * V + lag
    joint = np.bincount(context * V + ids, minlength=DEFAULT.switches * V * V).astype(float)
    marginal = np.bincount(context, minlength=DEFAULT.switches * V).astype(float)
    j, m = joint[joint > 0], marginal[marginal > 0]
    plug_in = (-(j * np.log(j)).sum() + (m * np.log(m)).sum()) / N
    miller_madow = plug_in + (len(j) - len(m)) / (2 * N)
    h, se = entropy_rate(DEFAULT), math.sqrt(varentropy(DEFAULT) / N)
    assert abs(miller_madow - h) < 4 * se, (miller_madow, h, se)
    assert plug_in < h
    assert np.mean(ids >= DEFAULT.content) == pytest.approx(DEFAULT.p_switch, abs=4 * math.sqrt(0.05 * 0.95 / N))


def test_floor_is_what_the_exact_model_gets_on_the_loaded_test_split():
    """The true model's mean NLL on the test split as the LM sees it (<eos> included) is within 5 sqrt(V/N) of H
    (the per-token losses are i.i.d., see the module docstring); n-gram baselines are far above the floor."""
    corpus = load_corpus("planted")
    to_gen = decode_ids(DEFAULT, corpus.vocab.itos)
    ids = to_gen[corpus.test.numpy()]
    assert np.array_equal(ids, sample_split(DEFAULT, "test"))  # the file round-trips the sample exactly
    nll = -exact_log_probs(DEFAULT, ids).mean()
    h = entropy_rate(DEFAULT)
    assert abs(nll - h) < 5 * math.sqrt(varentropy(DEFAULT) / len(ids))
    manifest = _manifest()
    assert manifest["test"]["exact_model_nll"] == pytest.approx(nll)
    assert manifest["floor_ppl"] == pytest.approx(math.exp(h))
    assert manifest["entropy_bits"] == pytest.approx(h / math.log(2))
    base = manifest["test"]
    assert base["unigram_ppl"] > 10 * manifest["floor_ppl"] and base["bigram_ppl"] > 10 * manifest["floor_ppl"]
    assert manifest["floor_ppl"] < base["skipgram_ppl"] < base["bigram_ppl"] / 4  # x_{t-k} is the main signal


def test_text_round_trips_through_the_tokeniser():
    ids = sample_split(SMALL, "test")
    names = SMALL.token_names()
    text = split_text(SMALL, ids)
    assert text.endswith("\n") and "  " not in text and " \n" not in text and "\n " not in text
    assert tokenize(text) == [names[i] for i in ids.tolist()]
    assert names[SMALL.eos_id] == EOS and ids[-1] == SMALL.eos_id


# --------------------------------------------------------------------------- determinism and generation


def test_generation_is_deterministic(tmp_path):
    assert write_generated(SMALL, "x", tmp_path / "a") and write_generated(SMALL, "x", tmp_path / "b")
    assert write_generated(dataclasses.replace(SMALL, seed=8), "x", tmp_path / "c")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["planted.json", "test.txt", "train.txt", "valid.txt"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "train.txt").read_bytes() != (tmp_path / "c" / "train.txt").read_bytes()
    assert not write_generated(SMALL, "x", tmp_path / "a")  # already there: nothing done


def test_the_registered_corpus_is_pinned(generated):
    """Same parameters + seed, same bytes on any machine (numpy's raw PCG64 stream is version-stable)."""
    assert _manifest()["sha256"]["test"] == "95e4697be9895fdb92115998987aec0cef3449df106cf33723dba5688be5ca3f"


# --------------------------------------------------------------------------- registration and loading


def test_loads_and_batches_without_touching_the_data_dir(generated, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("ESS_DATA_DIR", str(data_dir))
    corpus = load_corpus("planted", tmp_path / "elsewhere")
    assert corpus.path == (generated / f"planted-{DEFAULT.fingerprint()}").resolve()
    manifest = _manifest()
    assert len(corpus.vocab) == 44 and corpus.vocab.itos.count(EOS) == 1
    assert {s: corpus.split(s).numel() for s in ("train", "valid", "test")} == manifest["tokens"]
    data = batchify(corpus.train, 16)
    x, y = get_batch(data, 0, 35)
    assert x.shape == y.shape == (35, 16) and int(x.max()) < len(corpus.vocab)
    assert list(data_dir.iterdir()) == [] and not (tmp_path / "elsewhere").exists()
    assert verify_corpus("planted")["test"][2] == manifest["sha256"]["test"]


# --------------------------------------------------------------------------- bad parameters and the CLI


@pytest.mark.parametrize("changes,pattern", [
    (dict(k=0), r"^k: must be in 1\.\.1,000, got 0$"),
    (dict(k=1.5), r"^k: expected an integer, got 1\.5$"),
    (dict(eps=1.5), r"^eps: must be in \[0, 1\], got 1\.5$"),
    (dict(eps=float("nan")), r"^eps: must be in \[0, 1\], got nan$"),
    (dict(p_switch=0.0), r"^p_switch: must be in \(0, 1\), got 0\.0$"),
    (dict(p_switch=1), r"^p_switch: must be in \(0, 1\), got 1$"),
    (dict(switches=0), r"^switches: must be in 1\.\.1,000, got 0$"),
    (dict(content=True), r"^content: expected an integer, got True$"),
    (dict(test_tokens=0), r"^test_tokens: must be in 1\.\.100,000,000, got 0$"),
    (dict(seed=-1), r"^seed: must be in 0\.\."),
])
def test_bad_parameters_are_one_line_errors(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        PlantedParams(**changes)


def test_cli_generate_and_stats(tmp_path, capsys):
    assert cli_main(["generate", "planted", "--k", "3", "--train-tokens", "5000", "--valid-tokens", "500",
                     "--test-tokens", "500", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "floor perplexity 2.486" in out and f"files in {tmp_path / 'out'}" in out and "not the registered" in out
    assert json.loads((tmp_path / "out" / "planted.json").read_text())["params"]["k"] == 3
    assert cli_main(["stats", "planted"]) == 0
    out = capsys.readouterr().out
    tokens = _manifest()["tokens"]
    counts = f"train {tokens['train']:,} / valid {tokens['valid']:,} / test {tokens['test']:,} tokens"
    assert f"{counts}, vocabulary 44" in out
    assert "entropy rate 0.9107 nats = 1.3139 bits/token, floor perplexity 2.486" in out
    assert cli_main(["generate", "planted", "--eps", "2"]) == 2
    err = capsys.readouterr().err
    assert err == "error: eps: must be in [0, 1], got 2.0\n"
    assert cli_main(["generate", "ptb"]) == 2
    assert "'ptb' is not generated" in capsys.readouterr().err


def test_reaches_planted_input():
    def with_input(*nodes, m=3):
        return ESSGenotype(intra=DARTS_V2.intra, input=InterGenotype(m=m, nodes=nodes))

    assert reaches_planted_input(with_input((("tanh", 1), ("relu", 0))), k=2)
    assert not reaches_planted_input(with_input((("tanh", 2), ("relu", 0))), k=2)
    assert reaches_planted_input(with_input((("tanh", 0), ("relu", 1)), (("tanh", 2), ("relu", 3))), k=3)
    assert not reaches_planted_input(with_input((("tanh", 0), ("relu", 1)), (("tanh", 3), ("relu", 1))), k=3)
    assert not reaches_planted_input(with_input((("tanh", 2), ("relu", 1)), m=3), k=4)  # beyond the window
    assert reaches_planted_input(DARTS_V2, k=1)


@pytest.mark.parametrize("m,n_inter", [(3, 3), (2, 3), (4, 2)])
def test_chance_of_reaching_is_what_random_genotypes_do(m, n_inter):
    rng = random.Random(7)
    draws = [random_genotype(rng, steps=2, m=m, n_inter=n_inter) for _ in range(20_000)]
    for k in range(1, m + 2):
        share = sum(reaches_planted_input(g, k) for g in draws) / len(draws)
        expected = chance_of_reaching(k, m, n_inter)
        assert abs(share - expected) <= 4 * math.sqrt(expected * (1 - expected) / len(draws)) + 1e-12, (k, share)
    assert chance_of_reaching(2, 3, 3) == pytest.approx(0.84)          # 1 - (2/5)^2: why 5 of 5 says little


def test_planted_lag_edges_count_the_lag_the_input_cell_chose():
    def with_input(*nodes, m=3):
        return ESSGenotype(intra=DARTS_V2.intra, input=InterGenotype(m=m, nodes=nodes))

    cell = with_input((("tanh", 1), ("relu", 1)), (("tanh", 3), ("relu", 2)), (("tanh", 0), ("relu", 4)))
    assert planted_lag_edges(cell, 2) == (2, 3)     # x_(t-1) twice, x_(t-2) once; x_t and nodes are no lag
    assert planted_lag_edges(cell, 3) == (1, 3)
    assert planted_lag_edges(cell, 4) == (0, 3)     # out of the window: read by none
    rng = random.Random(3)
    draws = [planted_lag_edges(random_genotype(rng, steps=2, m=3, n_inter=3), 2) for _ in range(20_000)]
    hits, lagged = sum(h for h, _ in draws), sum(n for _, n in draws)
    assert abs(hits / lagged - 0.5) < 4 * math.sqrt(0.25 / lagged)   # random lags: half each, as the test assumes


# --------------------------------------------------------------------------- a seconds-long search on it


@pytest.mark.slow
def test_smoke_search_on_planted(tmp_path):
    """``python -m ess.search --smoke-test --dataset planted`` (one epoch, one thread: seconds) writes a genotype."""
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "ESS_GENERATED_DIR": str(tmp_path / "gen")}
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ess.search", "--smoke-test", "--dataset", "planted", "--epochs", "1",
                           "--threads", "1", "--no-draw", "--run-dir", str(run)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    final = json.loads(proc.stdout.splitlines()[-1])
    genotype = ESSGenotype.from_dict(json.loads((run / "genotype.json").read_text()))
    assert genotype == ESSGenotype.from_dict(final["genotype"]) and genotype.input.m == 2
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["valid/ppl"] < 60  # below the ~44-token uniform guess plus slack: it learned something
