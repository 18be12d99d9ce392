"""A generated language with planted structure and an exactly known entropy rate (issue 15, item 2).

The language
------------
Tokens are ``C`` content tokens ``c0 .. c{C-1}`` and ``S`` switch tokens; switch 0 *is* ``<eos>`` (the
line end, written as a newline) and switches ``1 .. S-1`` are ``s1 .. s{S-1}``. The regime ``z_t`` is
the index of the most recent switch token before ``t`` (the "longer hidden state": it can lie
arbitrarily far back). At each step, with probability ``p`` (``p_switch``) a switch token is drawn
uniformly (and becomes the regime); otherwise a content token: with probability ``1 - eps`` the
token ``pi_z(c(x_{t-k}))`` for a seeded permutation ``pi_z`` of the content tokens (``c`` maps a content
token to itself and switch ``j`` to content ``j mod C``), else a uniform content token. Every split
starts as if preceded by ``<eos>`` tokens (the start of a file is the start of a line): ``z = 0`` and
``x_{t-k} = <eos>`` until the split has its own past.

Because ``<eos>`` is one of the switch tokens, the token stream the LM sees (the loader appends
``<eos>`` to each line) *is* the process's output, token for token: line ends cost what the process
says, no more, and there is no line-length counter for a model to learn. The file ends with a newline
because each split is sampled until it has at least its target length and its last token is ``<eos>``.

Exact entropy rate (the proof)::

    z_t and x_{t-k} are functions of x_{<t} (with the fixed <eos> past), and X_t is drawn from P(. | z_t, x_{t-k}),
      so H(X_t | X_{<t}) = H(X_t | z_t, x_{t-k}).
    For every (z, a), P(. | z, a) is p/S on each switch, (1-p)(1-eps+eps/C) on pi_z(c(a)), (1-p)eps/C on the other
      C-1 contents: the same multiset for every context, so H(X_t | X_{<t} = past) = H for every past and t,
    H = h(p) + p ln S + (1-p) [-(q ln q) - (C-1) r ln r],  q = 1-eps+eps/C, r = eps/C;  H(X_1..X_N) = N H exactly.

The perplexity floor of a perfect model on the LM's token stream (``<eos>`` included) is ``exp(H)``.
Moreover the law of the exact model's per-token loss ``-ln P(X_t | X_{<t})`` is the same for every past,
so those losses are i.i.d. with mean ``H`` and variance ``V`` (:func:`varentropy`): the exact model's
mean NLL on ``N`` tokens lies within a few ``sqrt(V / N)`` of ``H``.

Defaults (``k = 2``, ``S = 4``, ``C = 40``, ``eps = 0.1``, ``p = 0.05``; ~200k train, ~20k valid/test
tokens, seed 1): ``H = 0.9107`` nats = 1.3139 bits per token, floor perplexity 2.486, against 41.3 for
unigram and for bigram models (add-one estimates from train, on test); the ``x_{t-k}`` dependency is the
dominant signal: ``P(x_t | x_{t-k})`` alone reaches 6.5, the regime alone says nothing about the next
token (given ``z`` only, the content is uniform), and the regime together with ``x_{t-k}`` gives the
floor. ``planted.json`` beside the files has the exact numbers and the measured baselines.

What else a model may use: other lags (``x_{t-2k}``, ...) inform ``x_t`` only through ``x_{t-k}`` (the
content chain follows the cycles of ``pi_z``), and given ``(z_t, x_{t-k})`` nothing else helps. The regime
is known exactly from the last switch token, however far back, but it can also be inferred, imperfectly,
from recent ``(x_{t-k-j}, x_{t-j})`` pairs, so a fixed window already recovers part of what the regime is
worth (not measured here). Truncated BPTT costs a little at the start of each batch column, which a model
meets without the split's past.

Where the ESS input cell sees it: the cell at step ``t`` reads ``x_t .. x_{t-m+1}`` (input-DAG index
``i`` is ``x_{t-i}``) and predicts ``x_{t+1}``, which depends on ``x_{t+1-k}``: input index ``k - 1``
(:func:`planted_input_index`). So ``k = 2`` is within reach of ``m >= 2``; ``planted-k3`` needs ``m = 3``
(the oldest slot of the paper's window); ``planted-k4`` is beyond ``m = 3`` (a control).

Determinism: randomness comes from numpy's ``SeedSequence`` and ``PCG64.random_raw`` (whose streams
numpy keeps stable across versions, unlike the ``Generator`` distribution methods), converted to
uniforms here with exactly rounded operations only; the same parameters and seed give byte-identical
split files on any machine (the test split's sha256 is pinned in the tests). ``planted.json`` is
byte-identical on one machine; its measured baselines are float sums whose last digits may differ
between CPUs (the exact rate does not depend on them).
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ess.data.registry import SPLIT_FILES, CorpusSpec, register_corpus
from ess.errors import ConfigError, DataError

GENERATOR = "ess.data.planted"
GENERATOR_VERSION = 1
MANIFEST = "planted.json"
EOS_NAME = "<eos>"
_SPLIT_STREAM = {"train": 1, "valid": 2, "test": 3}  # SeedSequence spawn keys; 0 draws the permutations
_MAX_SWITCHES = 1_000
_MAX_CONTENT = 100_000
_MAX_TOKENS = 100_000_000


def _as_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if number < low or (high is not None and number > high):
        bound = f">= {low}" if high is None else f"in {low}..{high:,}"
        raise ConfigError(f"{name}: must be {bound}, got {number}")
    return int(number)


def _as_prob(value: Any, name: str, *, open_interval: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    number = float(value)
    ok = 0.0 < number < 1.0 if open_interval else 0.0 <= number <= 1.0
    if not ok:  # NaN fails both comparisons
        raise ConfigError(f"{name}: must be in {'(0, 1)' if open_interval else '[0, 1]'}, got {value!r}")
    return number


@dataclass(frozen=True)
class PlantedParams:
    """The parameters of a planted corpus; validated (one-line :class:`ConfigError`) and normalised.

    ``p_switch`` lies strictly inside (0, 1): with 0 no line would ever end, with 1 there is no content.
    """

    k: int = 2
    switches: int = 4
    content: int = 40
    eps: float = 0.1
    p_switch: float = 0.05
    train_tokens: int = 200_000
    valid_tokens: int = 20_000
    test_tokens: int = 20_000
    seed: int = 1

    manifest = MANIFEST  # the file beside the splits (the corpus registry's generator contract)

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "k", _as_int(self.k, "k", 1, 1_000))
        setattr_(self, "switches", _as_int(self.switches, "switches", 1, _MAX_SWITCHES))
        setattr_(self, "content", _as_int(self.content, "content", 1, _MAX_CONTENT))
        setattr_(self, "eps", _as_prob(self.eps, "eps"))
        setattr_(self, "p_switch", _as_prob(self.p_switch, "p_switch", open_interval=True))
        for split in _SPLIT_STREAM:
            name = f"{split}_tokens"
            setattr_(self, name, _as_int(getattr(self, name), name, 1, _MAX_TOKENS))
        setattr_(self, "seed", _as_int(self.seed, "seed", 0, 2**63 - 1))

    # ------------------------------------------------------------------ the corpus-generator contract

    def fingerprint(self) -> str:
        """12 hex digits of the sha256 of the generator version and the parameters (the cache key)."""
        blob = json.dumps({"generator": GENERATOR, "version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def generate(self, out: Path, name: str) -> dict[str, Any]:
        """Write ``{train,valid,test}.txt`` and ``planted.json`` into the existing directory ``out``."""
        return write_planted(self, Path(out), name)

    def summary(self, manifest: Mapping[str, Any]) -> str:
        return summary(manifest)

    # ------------------------------------------------------------------ derived quantities

    @property
    def vocab_size(self) -> int:
        return self.switches + self.content

    @property
    def eos_id(self) -> int:
        """Generator ids: content ``0..C-1``, switch ``j`` is ``C + j``; ``<eos>`` is switch 0."""
        return self.content

    def token_names(self) -> list[str]:
        """The file token of each generator id (``<eos>`` for switch 0)."""
        return [f"c{i}" for i in range(self.content)] + [EOS_NAME] + [f"s{j}" for j in range(1, self.switches)]


# ----------------------------------------------------------------------------- exact quantities


def _xlogx(x: float) -> float:
    return x * math.log(x) if x > 0 else 0.0


def conditional_probabilities(params: PlantedParams) -> list[tuple[float, int]]:
    """The multiset of ``P(. | z, a)``, the same for every context: ``[(probability, how many tokens)]``."""
    p, eps, S, C = params.p_switch, params.eps, params.switches, params.content
    q, r = 1.0 - eps + eps / C, eps / C
    pairs = [(p / S, S), ((1 - p) * q, 1), ((1 - p) * r, C - 1)]
    return [(prob, count) for prob, count in pairs if count > 0]


def entropy_rate(params: PlantedParams) -> float:
    """``H(X_t | X_{<t})`` in nats, exact (see the module docstring)."""
    p, eps, S, C = params.p_switch, params.eps, params.switches, params.content
    q, r = 1.0 - eps + eps / C, eps / C
    content = -_xlogx(q) - (C - 1) * _xlogx(r)
    return -_xlogx(p) - _xlogx(1 - p) + p * math.log(S) + (1 - p) * content


def varentropy(params: PlantedParams) -> float:
    """Variance of the exact model's per-token loss ``-ln P(X_t | X_{<t})`` (the same for every past)."""
    h = entropy_rate(params)
    return sum(count * prob * (math.log(prob) + h) ** 2 for prob, count in conditional_probabilities(params) if prob)


def planted_input_index(k: int) -> int:
    """The ESS input-DAG index (``i`` is ``x_{t-i}`` at the cell's step ``t``) that holds the planted input."""
    return k - 1


def reaches_planted_input(genotype: Any, k: int) -> bool:
    """Whether a derived genotype's input cell reads the planted input directly (an edge from index k-1).

    Every input-DAG node feeds the cell's output (the mean of the nodes), so one edge from index ``k - 1``
    connects it; index 0 (``x_t``) is always connected through the residual.
    """
    index = planted_input_index(k)
    inter = genotype.input
    if index == 0:
        return True
    if index >= inter.m:
        return False
    return any(edge.pred == index for node in inter.nodes for edge in (node.a, node.b))


def chance_of_reaching(k: int, m: int, n_inter: int) -> float:
    """The share of random genotypes (:mod:`ess.space.sample`) whose input cell reads the planted input: the
    reference a search's recovery rate is held to.

    Each of a node's two branches takes its source uniformly among the ``m`` inputs and the earlier nodes, so
    node ``j`` (from 0) misses a given input with probability ``((m + j - 1) / (m + j))**2``; the product over the
    ``n_inter`` nodes telescopes to ``((m - 1) / (m + n_inter - 1))**2``. Index 0 (``x_t``) is always read, an
    index beyond the window never.
    """
    index = planted_input_index(k)
    if index == 0:
        return 1.0
    if index >= m or n_inter < 1:
        return 0.0
    return 1.0 - ((m - 1) / (m + n_inter - 1)) ** 2


def planted_lag_edges(genotype: Any, k: int) -> tuple[int, int]:
    """The input cell's edges from the planted input, and its edges from any earlier input (``x_{t-1}`` ..
    ``x_{t-m+1}``, indices 1 .. m-1): which lag a search chose. A random genotype's branch that reads an earlier
    input reads each of them alike, so the first count is binomial in the second with ``1 / (m - 1)``."""
    cell = genotype.input
    preds = [edge.pred for node in cell.nodes for edge in (node.a, node.b)]
    lagged = sum(1 <= p < cell.m for p in preds)
    index = planted_input_index(k)
    return (sum(p == index for p in preds) if 1 <= index < cell.m else 0), lagged   # index >= m would be a node


def chance_of_lag(k: int, m: int) -> float | None:
    """The chance that a random genotype's edge from an earlier input reads the planted one (the null of
    :func:`planted_lag_edges`): ``1 / (m - 1)``, 0 beyond the window, None where there is no earlier input."""
    index = planted_input_index(k)
    if index < 1 or m < 2:
        return None
    return 1.0 / (m - 1) if index < m else 0.0


def permutations(params: PlantedParams) -> np.ndarray:
    """``[S, C]``: row ``z`` is the seeded permutation ``pi_z`` of the content ids."""
    seq = np.random.SeedSequence(params.seed, spawn_key=(0,))
    raw = np.random.PCG64(seq).random_raw(params.switches * params.content)
    return np.argsort(raw.reshape(params.switches, params.content), axis=1, kind="stable").astype(np.int64)


def target_table(params: PlantedParams) -> np.ndarray:
    """``[S, V]``: ``pi_z(c(a))``, the likely content token in regime ``z`` after ``x_{t-k} = a``."""
    c_of = np.arange(params.vocab_size) % params.content  # content i -> i, switch j (id C + j) -> j mod C
    return permutations(params)[:, c_of]


def next_distribution(params: PlantedParams, past: Sequence[int], table: np.ndarray | None = None) -> np.ndarray:
    """``P(X_t = . | X_{<t} = past)`` over generator ids, straight from the definition (for checks)."""
    table = target_table(params) if table is None else table
    C, S = params.content, params.switches
    switches = [x for x in past if x >= C]
    z = switches[-1] - C if switches else 0
    a = past[-params.k] if len(past) >= params.k else params.eos_id
    probs = np.full(params.vocab_size, (1 - params.p_switch) * params.eps / C)
    probs[table[z, a]] += (1 - params.p_switch) * (1 - params.eps)
    probs[C:] = params.p_switch / S
    return probs


def regimes_and_lags(params: PlantedParams, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(z_t, x_{t-k})`` for every position of a split (generator ids), with the ``<eos>`` past."""
    ids = np.asarray(ids, dtype=np.int64)
    n, C = len(ids), params.content
    last = np.maximum.accumulate(np.where(ids >= C, np.arange(n), -1)) if n else np.empty(0, np.int64)
    before = np.concatenate([[-1], last[:-1]]) if n else last
    z = np.where(before >= 0, ids[np.maximum(before, 0)] - C, 0)
    k = params.k
    lag = np.concatenate([np.full(min(k, n), params.eos_id), ids[:max(n - k, 0)]])
    return z, lag


def exact_log_probs(params: PlantedParams, ids: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
    """``ln P(x_t | x_{<t})`` of the true model at every position of a split (generator ids)."""
    table = target_table(params) if table is None else table
    ids = np.asarray(ids, dtype=np.int64)
    z, lag = regimes_and_lags(params, ids)
    p, eps, C, S = params.p_switch, params.eps, params.content, params.switches
    hit = ids == table[z, lag]
    with np.errstate(divide="ignore"):
        content = np.log((1 - p) * np.where(hit, 1 - eps + eps / C, eps / C))
    return np.where(ids >= C, math.log(p / S), content)


# ----------------------------------------------------------------------------- sampling


def _uniforms(raw: np.ndarray) -> np.ndarray:
    return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)  # 53 bits -> [0, 1)


def _below(u: np.ndarray, n: int) -> list[int]:
    return np.minimum((u * n).astype(np.int64), n - 1).tolist()


def sample_split(params: PlantedParams, split: str, table: np.ndarray | None = None) -> np.ndarray:
    """The generator ids of one split: at least ``<split>_tokens`` tokens, ending with ``<eos>``."""
    table = target_table(params) if table is None else table
    target = getattr(params, f"{split}_tokens")
    bits = np.random.PCG64(np.random.SeedSequence(params.seed, spawn_key=(_SPLIT_STREAM[split],)))
    C, k, eos = params.content, params.k, params.eos_id
    rows = table.tolist()
    seq = [eos] * k  # the virtual past; dropped at the end
    z = 0
    chunk = max(1024, target // 4)
    while True:
        u = _uniforms(bits.random_raw(4 * chunk)).reshape(chunk, 4)  # 4 draws per step, whatever is used
        is_switch = (u[:, 0] < params.p_switch).tolist()
        which = _below(u[:, 1], params.switches)
        is_noise = (u[:, 2] < params.eps).tolist()
        noise = _below(u[:, 3], C)
        append = seq.append
        for i in range(chunk):
            if is_switch[i]:
                z = which[i]
                append(C + z)
                if z == 0 and len(seq) - k >= target:
                    return np.asarray(seq[k:], dtype=np.int64)
            elif is_noise[i]:
                append(noise[i])
            else:
                append(rows[z][seq[-k]])


def split_text(params: PlantedParams, ids: np.ndarray) -> str:
    """The file text of a split: tokens joined by spaces, ``<eos>`` written as the line end."""
    names = params.token_names()
    names[params.eos_id] = "\n"
    text = " ".join([names[i] for i in ids.tolist()])
    return text.replace(" \n", "\n").replace("\n ", "\n")


def decode_ids(params: PlantedParams, itos: Sequence[str]) -> np.ndarray:
    """Generator id of each vocabulary entry (maps a loaded corpus's ids back to the language's)."""
    index = {name: i for i, name in enumerate(params.token_names())}
    try:
        return np.asarray([index[w] for w in itos], dtype=np.int64)
    except KeyError as err:
        raise DataError(f"token {err.args[0]!r} is not a token of this planted language") from None


# ----------------------------------------------------------------------------- baselines


def _ngram_ppl(params: PlantedParams, train: np.ndarray, test: np.ndarray, lag: int) -> float:
    """Perplexity on ``test`` of the add-one-smoothed ML estimate of ``P(x_t | x_{t-lag})`` from ``train``.

    ``lag = 0`` is the unigram model; contexts before a split's start are the ``<eos>`` past.
    """
    V = params.vocab_size
    if lag == 0:
        probs = (np.bincount(train, minlength=V) + 1.0) / (len(train) + V)
        return float(np.exp(-np.log(probs[test]).mean()))

    def contexts(ids: np.ndarray) -> np.ndarray:
        return np.concatenate([np.full(min(lag, len(ids)), params.eos_id), ids[:max(len(ids) - lag, 0)]])

    counts = np.bincount(contexts(train) * V + train, minlength=V * V).reshape(V, V) + 1.0
    probs = counts / counts.sum(axis=1, keepdims=True)
    return float(np.exp(-np.log(probs[contexts(test), test]).mean()))


# ----------------------------------------------------------------------------- writing


def write_planted(params: PlantedParams, out: Path, name: str) -> dict[str, Any]:
    """Sample every split, check it, and write the files and ``planted.json`` (fsynced) into ``out``."""
    table = target_table(params)
    ids = {split: sample_split(params, split, table) for split in _SPLIT_STREAM}
    seen = np.bincount(ids["train"], minlength=params.vocab_size)
    if (seen == 0).any():
        missing = params.token_names()[int(np.argmax(seen == 0))]
        raise DataError(f"planted corpus {name!r}: the train split ({len(ids['train']):,} tokens) never has "
                        f"the token {missing!r}; raise train_tokens or p_switch")
    data = {split: split_text(params, x).encode("ascii") for split, x in ids.items()}
    h = entropy_rate(params)
    test_nll = float(-exact_log_probs(params, ids["test"], table).mean())
    manifest = {
        "name": name,
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "fingerprint": params.fingerprint(),
        "params": asdict(params),
        "entropy_nats": h,
        "entropy_bits": h / math.log(2),
        "floor_ppl": math.exp(h),
        "varentropy_nats2": varentropy(params),
        "vocabulary": params.vocab_size,
        "eos": "switch token 0 (each line ends where the process emits it)",
        "planted_input_index": planted_input_index(params.k),
        "tokens": {split: len(x) for split, x in ids.items()},
        "test": {
            "exact_model_nll": test_nll,
            "exact_model_ppl": math.exp(test_nll),
            "unigram_ppl": _ngram_ppl(params, ids["train"], ids["test"], 0),
            "bigram_ppl": _ngram_ppl(params, ids["train"], ids["test"], 1),
            "skipgram_ppl": _ngram_ppl(params, ids["train"], ids["test"], params.k),
            "estimator": "add-one-smoothed ML estimates from train; skipgram is P(x_t | x_{t-k})",
        },
        "bytes": {split: len(b) for split, b in data.items()},
        "sha256": {split: hashlib.sha256(b).hexdigest() for split, b in data.items()},
    }
    for split, blob in data.items():
        _write_synced(out / f"{split}.txt", blob)
    _write_synced(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("ascii"))
    return manifest


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def summary(manifest: Mapping[str, Any]) -> str:
    """One line: the exact floor and the baselines recorded in ``planted.json``."""
    test = manifest.get("test", {})
    return (f"entropy rate {manifest['entropy_nats']:.4f} nats = {manifest['entropy_bits']:.4f} bits/token, "
            f"floor perplexity {manifest['floor_ppl']:.3f} (exact model on test {test.get('exact_model_ppl', 0):.3f}; "
            f"unigram {test.get('unigram_ppl', 0):.1f}, bigram {test.get('bigram_ppl', 0):.1f}, "
            f"x_(t-k) skip-gram {test.get('skipgram_ppl', 0):.2f})")


# ----------------------------------------------------------------------------- registration


def planted_spec(name: str, **params: Any):
    """A :class:`~ess.data.CorpusSpec` for a planted corpus (register it with ``register_corpus``)."""
    return CorpusSpec(name=name, files=SPLIT_FILES, generator=PlantedParams(**params))


def register_planted() -> None:
    """Register ``planted`` (k = 2), ``planted-k3`` (the oldest slot of m = 3) and ``planted-k4`` (beyond it)."""
    for name, k in (("planted", 2), ("planted-k3", 3), ("planted-k4", 4)):
        register_corpus(planted_spec(name, k=k))
