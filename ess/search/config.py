"""The search config: one frozen dataclass with the DARTS defaults, plus named presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ess.config import check
from ess.guard import HELP_LR_FACTOR, HELP_MAX_PPL, HELP_MAX_ROLLBACKS
from ess.supernet.model import SUPERNET_FIXED, SupernetFields

SECOND_ORDER = ("darts", "exact")
LENGTHS = ("normal", "darts")
VALID_BATCHES = ("contiguous", "darts")
ARCH_BN_STATS = ("frozen", "update")
SELECTIONS = ("last", "best_valid")
DERIVATIONS = ("argmax", "perturbation", "rank")
METHODS = ("darts", "rsws")


@dataclass(frozen=True)
class SearchConfig(SupernetFields):
    """Search config; defaults are the DARTS recurrent search values (reference.md section 3). The fields that
    define the supernet (:class:`ess.supernet.model.SupernetFields`) come first, declared and checked there."""

    method: str = field(default="darts", metadata={
        "help": "how the supernet is trained: darts (bilevel, architecture weights by gradient) or rsws (random "
                "search with weight sharing: one uniformly sampled path per step, then the best of rank_samples "
                "random genotypes by shared-weight ranking; Li & Talwalkar 2019)"})
    dataset: str = field(default="ptb", metadata={"help": "registered corpus"})
    data_dir: str | None = field(default=None, metadata={"help": "else $ESS_DATA_DIR, else ./data"})
    valid_part: str = field(default="search", metadata={
        "help": "the validation tokens the search fits, scores and ranks on: search (the first half; the second "
                "selects among searches, ess.data.roles) or all"})
    order: int = field(default=1, metadata={"help": "1: first-order, 2: second-order (unrolled) gradient"})
    second_order: str = field(default="darts", metadata={
        "help": "with order 2: darts (v clipped to --clip, as the public DARTS code) or exact (unclipped)"})
    lengths: str = field(default="normal", metadata={
        "help": "training sequence lengths: normal (N(bptt, 5), AWD-LSTM) or darts (bptt, or bptt/2 w.p. 0.05)"})
    valid_batches: str = field(default="contiguous", metadata={
        "help": "architecture batches: contiguous (own position, the training batch's length) or darts "
                "(the training batch's position, bptt long)"})
    arch_bn_stats: str = field(default="frozen", metadata={
        "help": "batch-norm running statistics in the architecture step: frozen or update (DARTS)"})
    arch_reg: bool = field(default=True, metadata={"help": "AR/TAR in the architecture loss too (DARTS: NLL only)"})
    beta_decay: float = field(default=0.0, metadata={
        "help": "beta-decay regularisation of the architecture (beta-DARTS): weight at the last epoch (0: off)"})
    derive: str = field(default="argmax", metadata={
        "help": "derivation: argmax (DARTS), perturbation (DARTS-PT: the supernet's valid loss without each choice) "
                "or rank (the best by shared-weight ranking of the argmax genotype, its one-edit neighbours and "
                "rank_samples random genotypes); rsws always ranks"})
    rank_samples: int = field(default=1000, metadata={
        "help": "random genotypes ranked by the supernet at the end (rsws, derive rank)"})
    rank_tokens: int = field(default=20_000, metadata={
        "help": "validation tokens (of the search part) that rank a genotype"})
    rank_screen: float = field(default=0.2, metadata={
        "help": "successive halving: every candidate is first scored on this share of rank_tokens (1: no screen)"})
    rank_keep: int = field(default=100, metadata={
        "help": "successive halving: the candidates best on the screen that are scored on all rank_tokens"})
    rank_pool: int = field(default=32, metadata={
        "help": "rsws: random genotypes (drawn once) ranked after each epoch; the epoch's genotype is their best"})
    pt_tokens: int = field(default=5_000, metadata={"help": "validation tokens per perturbation measurement"})
    drop_ratio: float = field(default=1.5, metadata={
        "help": "an inter branch says none when its none weight exceeds this times its best choice (inf: never)"})
    decision_ratio: float = field(default=1.5, metadata={
        "help": "a choice is decided when its weight is at least this times its runner-up's"})
    select: str = field(default="last", metadata={
        "help": "the search's genotype: last (epoch) or best_valid (the epoch of the lowest supernet valid ppl)"})
    lr: float = field(default=20.0, metadata={"help": "weight SGD learning rate (scaled by seq_len / bptt)"})
    clip: float = field(default=0.25, metadata={"help": "gradient norm clipping"})
    wdecay: float = field(default=5e-7, metadata={"help": "weight decay of the network weights"})
    arch_lr: float = field(default=3e-3, metadata={"help": "Adam learning rate of the architecture"})
    arch_wdecay: float = field(default=1e-3, metadata={"help": "weight decay of the architecture"})
    epochs: int = field(default=50, metadata={"help": "number of epochs"})
    batch_size: int = field(default=256, metadata={"help": "training and architecture batch size"})
    eval_batch_size: int = field(default=10, metadata={"help": "validation batch size"})
    bptt: int = field(default=35, metadata={"help": "mean sequence length"})
    max_seq_len_delta: int = field(default=20, metadata={"help": "longest sequence is bptt + this"})
    alpha: float = field(default=0.0, metadata={"help": "AR coefficient"})
    beta: float = field(default=1e-3, metadata={"help": "TAR coefficient"})
    seed: int = field(default=3, metadata={"help": "fixes initialisation, data order and dropout"})
    max_rollbacks: int = field(default=3, metadata={"help": HELP_MAX_ROLLBACKS})
    rollback_lr_factor: float = field(default=0.5, metadata={"help": HELP_LR_FACTOR})
    max_ppl: float = field(default=0.0, metadata={"help": HELP_MAX_PPL})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N]"})
    threads: int = field(default=0, metadata={"help": "CPU threads (0: torch default)"})
    max_train_tokens: int = field(default=0, metadata={"help": "use only the first N training tokens (0: all)"})
    max_eval_tokens: int = field(default=0, metadata={"help": "use only the first N valid tokens (0: all)"})
    draw: bool = field(default=True, metadata={"help": "draw the genotype picture each epoch"})
    run_dir: str = field(default="runs/search", metadata={"help": "checkpoints, genotypes, metrics go here"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("epochs", "batch_size", "eval_batch_size", "bptt"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        for name in ("lr", "clip", "wdecay", "arch_lr", "arch_wdecay", "alpha", "beta", "max_seq_len_delta",
                     "max_train_tokens", "max_eval_tokens", "threads", "max_rollbacks", "max_ppl", "beta_decay"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(0.0 < self.rollback_lr_factor <= 1.0, "rollback_lr_factor",
              f"must be in (0, 1], got {self.rollback_lr_factor}")
        check(self.order in (1, 2), "order", f"must be 1 or 2, got {self.order}")
        for name, known in (("second_order", SECOND_ORDER), ("lengths", LENGTHS), ("valid_batches", VALID_BATCHES),
                            ("arch_bn_stats", ARCH_BN_STATS), ("select", SELECTIONS), ("derive", DERIVATIONS),
                            ("method", METHODS), ("valid_part", ("search", "all"))):
            check(getattr(self, name) in known, name,
                  f"unknown {getattr(self, name)!r} (known: {', '.join(known)})")
        check(self.drop_ratio > 0, "drop_ratio", f"must be positive (inf: never drop), got {self.drop_ratio}")
        check(1 <= self.decision_ratio < float("inf"), "decision_ratio",
              f"must be a finite number >= 1, got {self.decision_ratio}")
        check(self.pt_tokens >= 100, "pt_tokens", f"must be >= 100, got {self.pt_tokens}")
        check(0 < self.rank_screen <= 1, "rank_screen", f"must be in (0, 1], got {self.rank_screen}")
        for name in ("rank_samples", "rank_pool", "rank_keep"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.rank_tokens >= 100, "rank_tokens", f"must be >= 100, got {self.rank_tokens}")
        if self.method == "rsws":   # no architecture weights to fit or read
            check(self.derive != "perturbation", "derive",
                  "rsws has no architecture weights to perturb: it ranks (use derive rank or argmax)")
            check(self.order == 1, "order", "rsws takes no architecture step (second order needs one)")
            check(self.beta_decay == 0, "beta_decay", "rsws has no architecture weights to regularise")
            check(self.inter_norm == "none", "inter_norm",
                  f"rsws trains single paths, where {self.inter_norm!r} normalisation puts unit-scale terms into x^ "
                  "and h^ and the supernet does not learn (docs/method.md 12): use --inter-norm none")


#: the fields that must match when a search resumes: the supernet's (:data:`ess.supernet.model.SUPERNET_FIXED`)
#: and the data's
RESUME_FIXED: tuple[str, ...] = (*SUPERNET_FIXED, "method", "dataset", "valid_part", "batch_size", "seed",
                                 "max_train_tokens", "max_eval_tokens")


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on 2 CPU cores: tiny sizes on a slice of PTB (--smoke-test, the tests, the jobs' smoke runs).
    "smoke": dict(emsize=16, nhid=16, steps=3, n_inter=2, m=2, batch_size=8, epochs=2, max_train_tokens=4_000,
                  max_eval_tokens=1_200, rank_samples=20, rank_pool=4, progress=False, run_dir="runs/search-smoke"),
    # A real but small joint search on a 2-core laptop (minutes, not hours). At 64 units and batch 32,
    # lr 20 turned back up by epoch 3 (valid ppl 3674, 2472, 2625 on 40k tokens) where lr 10 kept falling
    # (4331, 2848, 2185).
    "cpu-small": dict(emsize=64, nhid=64, batch_size=32, epochs=4, lr=10.0, max_train_tokens=100_000,
                      max_eval_tokens=20_000, run_dir="runs/search-cpu-small"),
    # Searches that move on 2 CPU cores: the cpu-small sizes on the whole PTB training set, 3 epochs (830
    # architecture steps each at batch 32 and bptt 35: 2,490 in all; issue 20 measured a joint pilot of this size
    # moving where the 100k-token preset's 360 steps did not). The study's pilot (docs/study-design.md) measures its
    # time per mode.
    "cpu-full": dict(emsize=64, nhid=64, batch_size=32, epochs=3, lr=10.0, max_eval_tokens=20_000,
                     run_dir="runs/search-cpu-full"),
    # The DARTS/ESS search sizes.
    "paper": dict(emsize=300, nhid=300, batch_size=256, epochs=50),
    # Intra mode with DARTS's loop as well as its model (reference.md section 3 and the public code): fixed
    # 35/17 lengths, architecture batches read at the training position, batch-norm statistics updated by the
    # architecture step, NLL-only architecture loss, embedding U(+-0.04). docs/method.md gives the effect of each.
    "darts": dict(mode="intra", emsize=300, nhid=300, batch_size=256, epochs=50, lengths="darts",
                  valid_batches="darts", arch_bn_stats="update", arch_reg=False, emb_init=0.04),
}
