"""The main study's design read off a finished pilot (docs/study-design.md section 2), written as a study file.

    python -m analysis.pilot --data docs/pilot/data --write configs/study-cpu-2.yaml
    python -m analysis.pilot --study runs/tune/study-pilot-1 --data-out docs/pilot/data --write ...

The rules are fixed before the pilot's numbers are known:

- **seeds per arm**: the pooled seed sd ``s`` of the log primary metric over the pilot's search arms gives the
  standardised target ``d = -ln(1 - target_gain) / s``; ``n`` = :func:`analysis.stats.seeds_for_power` at
  ``alpha / comparisons`` (Holm's first step). If ``n`` seeds do not fit the budget, the study runs the largest
  ``n`` that fits and states the gain that ``n`` detects (:func:`analysis.stats.detectable_effect`);
- **retrain epochs**: the pilot's epochs if its Kendall tau of the short against the long retrain is at least
  ``tau_min``, else twice them;
- **random search at equal wall clock**: ``random_k`` = the median joint search seconds over the seconds of one
  screening retrain (``random_epochs`` epochs), rounded down, at least 2;
- **the primary arms first**: the arms of no primary comparison (inter, LSTM, DARTS_V2) run on the first
  ``exploratory_seeds`` (4) seeds only, so that the budget buys seeds for the primary comparisons;
- **fresh seeds**: the study's seeds start at ``first_seed`` (101), past the pilot's: with the same code a pilot
  seed would rerun its pilot trial, and the pilot's data, which were looked at, are never the study's;
- **time**: per seed and arm the pilot's median trial seconds (an arm the pilot did not run takes ``stand_in``'s),
  retrains scaled by their epochs; the wall clock is trial seconds over ``slots`` and the pilot's measured packing
  (busy slot share), plus ``fixed_hours`` for the exploratory stages that do not grow with the seeds (transfer
  over ``transfer_seeds`` seeds, WikiText-2 on one: about 1.5 h, from study-cpu-1's 467 s per transfer trial at
  the same tagger preset and a WikiText-2 retrain's ~6x the tokens x softmax width of a PTB one).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from analysis.stats import detectable_effect, seeds_for_power
from analysis.study import pooled_log_sd
from analysis.study_data import StudyData, from_experiment, read_data, write_data
from ess.checkpoint import atomic_write_text
from ess.cli import run_main
from ess.errors import ConfigError
from ess.study import ARMS, StudyDesign

#: the main study's arms (issue 21: intra, inter, joint, RSWS, random at joint's wall clock, DARTS_V2, LSTM)
MAIN_ARMS = ("intra", "inter", "joint", "rsws", "random", "lstm", "darts_v2")
MAIN_STAGES = ("search", "baselines", "random", "transfer", "wikitext2")


@dataclass(frozen=True)
class Rules:
    """The fixed rules that turn a pilot into a design."""

    design: StudyDesign = field(default_factory=StudyDesign)
    budget_hours: float = 12.0
    fixed_hours: float = 1.5
    slots: int = 2
    tau_min: float = 0.6
    random_epochs: int = 1
    arms: tuple[str, ...] = MAIN_ARMS
    stand_in: Mapping[str, str] = field(default_factory=lambda: {"inter": "joint"})
    max_seeds: int = 40
    first_seed: int = 101
    transfer_seeds: int = 3
    exploratory_seeds: int = 4
    search_preset: str = "cpu-full"
    train_preset: str = "cpu-full"
    match_params: str = "DARTS_V2@128"
    transfer_preset: str = "short"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0


@dataclass(frozen=True)
class Decision:
    """What the pilot fixes: the noise, the seeds, the retrain budget, random search's k, the time it takes."""

    pilot: str
    metric: str
    target_gain: float
    power: float
    pooled_log_sd: float
    dof: int
    pilot_arms: dict[str, int]
    seeds_for_target: int
    seeds: int
    fits: bool
    detectable_gain: float
    tau_short_long: dict[str, Any]
    pilot_epochs: int
    retrain_epochs: int
    random_k: int
    seed_trial_seconds: dict[str, float]
    exploratory: tuple[str, ...]
    exploratory_seeds: int
    packing: float
    hours: float

    def lines(self) -> list[str]:
        """The decision in plain lines, as the study file's header and the job's output say it."""
        t = self.tau_short_long
        interval = t.get("interval")
        tau = ((f"Kendall tau {t['tau']:.2f} " + (f"[{interval[0]:.2f}, {interval[1]:.2f}]" if interval else
                                                   "(no interval)") + f", n = {t['n']}")
               if t else "no short-vs-long tau in the pilot")
        per_seed = ", ".join(f"{a} {s / 60:.0f}" for a, s in self.seed_trial_seconds.items())
        target = f"a {100 * self.target_gain:g}% gain with {100 * self.power:g}% power"
        reach = (f"{self.seeds_for_target} seeds per arm detect {target}; they fit the budget"
                 if self.fits else
                 f"{self.seeds_for_target} seeds per arm would detect {target}; {self.seeds} fit the "
                 f"budget and detect a {100 * self.detectable_gain:.1f}% gain")
        return [f"pilot {self.pilot}: seed sd of log {self.metric} {100 * self.pooled_log_sd:.2f}% "
                f"({self.dof} degrees of freedom; seeds: {', '.join(f'{a} {n}' for a, n in self.pilot_arms.items())})",
                reach,
                f"retrain: {self.retrain_epochs} epoch(s) (short {self.pilot_epochs} vs long: {tau})",
                f"random search: best of {self.random_k} genotypes by a screening retrain (joint's wall clock)",
                f"trial-minutes per seed: {per_seed}; packing {self.packing:.2f}; "
                f"about {self.hours:.1f} h for {self.seeds} seeds (the exploratory arms "
                f"{', '.join(self.exploratory)} on the first {self.exploratory_seeds})"]


def _median(values: Sequence[Any]) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.median(finite) if finite else math.nan


def _packing(data: StudyData, slots: int) -> float:
    """The share of the slots that trials kept busy while any ran (1: no idle slot)."""
    trial_hours = sum(data.cost.minutes.values()) / 60
    return min(1.0, trial_hours / (slots * data.cost.busy_hours)) if data.cost.busy_hours > 0 else 1.0


def _arm_seconds(trials: Sequence[Mapping[str, Any]], arm: str) -> tuple[float, float]:
    rows = [t for t in trials if t.get("arm") == arm]
    return _median([t.get("search_seconds") for t in rows]), _median([t.get("retrain_seconds") for t in rows])


def seed_seconds(trials: Sequence[Mapping[str, Any]], rules: Rules, retrain_scale: float,
                 random_k: int, screen_seconds: float, retrain: float) -> dict[str, float]:
    """Per main-study arm, the trial seconds one seed costs at the pilot's measured medians (``retrain``: the
    median retrain's seconds at the study's epochs)."""
    out = {}
    for arm in rules.arms:
        kind = ARMS[arm].kind
        source = arm if any(t.get("arm") == arm for t in trials) else rules.stand_in.get(arm, arm)
        search, own_retrain = _arm_seconds(trials, source)
        if kind == "search":
            if not math.isfinite(search):
                raise ConfigError(f"pilot: no search seconds for arm {arm!r} (nor a stand-in in the pilot)")
            out[arm] = search + own_retrain * retrain_scale
        elif kind == "random":
            out[arm] = random_k * screen_seconds + retrain
        else:
            out[arm] = retrain
    return out


def decide(data: StudyData, rules: Rules = Rules()) -> Decision:
    """The main study's seeds, retrain epochs and ``random_k`` from ``data``, a finished pilot, by ``rules``."""
    summary, trials = data.summary, data.summary.get("trials", [])
    design = rules.design
    pilot_arms = [a for a in dict.fromkeys(t["arm"] for t in trials) if ARMS.get(a) and ARMS[a].kind == "search"]
    if not pilot_arms:
        raise ConfigError("pilot: summary.json: trials: no search arm (is this a pilot with a search stage?)")
    if max(int(t["seed"]) for t in trials) >= rules.first_seed:
        raise ConfigError(f"pilot: summary.json: trials: a pilot seed reaches the study's first seed "
                          f"{rules.first_seed}")
    sd, ns = pooled_log_sd(trials, pilot_arms, design.metric)
    if not math.isfinite(sd) or sd <= 0:
        raise ConfigError(f"pilot: summary.json: trials: no seed sd of {design.metric} (two seeds of an arm needed)")
    alpha = design.alpha / max(len(design.pairs), 1)
    needed = seeds_for_power(-math.log(1 - design.target_gain) / sd, alpha, design.power)
    if not summary.get("tau", {}).get("short_epochs"):
        raise ConfigError("pilot: summary.json: tau: no tau stage (the retrain budget is decided from it)")
    tau = dict(summary["tau"].get("short_vs_long") or {})
    pilot_epochs = int(summary["tau"]["short_epochs"])
    epochs = pilot_epochs if tau and tau["tau"] >= rules.tau_min else 2 * pilot_epochs
    scale = epochs / pilot_epochs
    joint_search, _ = _arm_seconds(trials, "joint")
    retrain = _median([t.get("retrain_seconds") for t in trials])
    screen = retrain * rules.random_epochs / pilot_epochs
    random_k = max(2, int(joint_search // screen)) if math.isfinite(joint_search) and screen > 0 else 2
    per_seed = seed_seconds(trials, rules, scale, random_k, screen, retrain * scale)
    packing = _packing(data, rules.slots)

    primary = {a for pair in design.pairs for a in pair}

    def hours(n: int) -> float:
        seconds = sum(v * (n if a in primary else min(n, rules.exploratory_seeds)) for a, v in per_seed.items())
        return seconds / (rules.slots * packing) / 3600 + rules.fixed_hours

    fits = needed <= rules.max_seeds and hours(needed) <= rules.budget_hours
    seeds = needed if fits else max([n for n in range(2, rules.max_seeds + 1) if hours(n) <= rules.budget_hours],
                                    default=2)
    gain = 1 - math.exp(-detectable_effect(seeds, alpha, design.power) * sd)
    return Decision(pilot=str(summary.get("name", "")), metric=design.metric, target_gain=design.target_gain,
                    power=design.power, pooled_log_sd=sd,
                    dof=sum(n - 1 for n in ns if n > 1), pilot_arms=dict(zip(pilot_arms, ns)),
                    seeds_for_target=needed, seeds=seeds, fits=fits, detectable_gain=gain, tau_short_long=tau,
                    pilot_epochs=pilot_epochs, retrain_epochs=epochs, random_k=random_k,
                    seed_trial_seconds=per_seed, exploratory=tuple(a for a in per_seed if a not in primary),
                    exploratory_seeds=rules.exploratory_seeds, packing=packing, hours=hours(seeds))


def study_file(decision: Decision, rules: Rules = Rules(), command: str = "") -> str:
    """The main study's ``--config`` YAML: the pilot's presets, the decided seeds, epochs and ``random_k``, the
    design with the pilot's noise figure; its header says how every number was decided."""
    seeds = list(range(rules.first_seed, rules.first_seed + decision.seeds))
    config = {
        "seeds": seeds, "cpus_per_trial": rules.cpus_per_trial, "gpus_per_trial": rules.gpus_per_trial,
        "arms": list(rules.arms), "stages": list(MAIN_STAGES),
        "exploratory_seeds": rules.exploratory_seeds, "transfer_seeds": seeds[:rules.transfer_seeds],
        "random_k": decision.random_k, "random_epochs": rules.random_epochs,
        "search": {"preset": rules.search_preset},
        "train": {"preset": rules.train_preset, "match_params": rules.match_params, "epochs": decision.retrain_epochs},
        "transfer": {"preset": rules.transfer_preset},
        "design": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(rules.design).items()},
                   "noise_sd": round(decision.pooled_log_sd, 5),
                   "pilot": f"{decision.pilot}: {decision.dof} degrees of freedom over "
                            f"{', '.join(decision.pilot_arms)}"}}
    head = [f"The pre-registered study on {rules.slots} trial slots (docs/study-design.md section 3). Written by",
            f"  {command or 'python -m analysis.pilot'}", "from the pilot; the numbers below were decided so:"]
    head += [f"  {line}" for line in decision.lines()]
    body = yaml.safe_dump(config, sort_keys=False, width=120, default_flow_style=None)
    return "".join(f"# {line}\n" for line in head) + body


def main_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analysis.pilot", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--study", help="the pilot's experiment folder (holds summary.json)")
    source.add_argument("--data", help="the pilot's raw data folder (analysis.study_data)")
    parser.add_argument("--data-out", default="", help="with --study: write its raw data folder here first")
    parser.add_argument("--write", default="", help="write the main study's --config YAML here")
    parser.add_argument("--budget-hours", type=float, default=Rules.budget_hours)
    parser.add_argument("--fixed-hours", type=float, default=Rules.fixed_hours,
                        help="the exploratory stages that do not grow with the seeds (transfer, WikiText-2)")
    parser.add_argument("--slots", type=int, default=Rules.slots, help="trials that run at once (2 on 2 cores)")
    parser.add_argument("--arms", default=",".join(MAIN_ARMS), help="the main study's arms, comma-separated")
    for name in ("search_preset", "train_preset", "match_params", "transfer_preset"):
        parser.add_argument(f"--{name.replace('_', '-')}", default=getattr(Rules, name),
                            help="the pilot's, for the study file (the study must run what the pilot measured)")
    for name in ("cpus_per_trial", "gpus_per_trial"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(Rules, name))
    return parser.parse_args(argv)


@run_main
def main(argv: list[str] | None = None) -> int:
    args = main_args(argv)
    if args.study:
        data = from_experiment(args.study)
        if args.data_out:
            data = read_data(write_data(data, args.data_out))
    else:
        data = read_data(args.data)
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    for arm in arms:
        if arm not in ARMS:
            raise ConfigError(f"--arms: unknown arm {arm!r} (known: {', '.join(ARMS)})")
    rules = Rules(budget_hours=args.budget_hours, fixed_hours=args.fixed_hours, slots=args.slots, arms=arms,
                  **{k: getattr(args, k) for k in ("search_preset", "train_preset", "match_params", "transfer_preset",
                                                   "cpus_per_trial", "gpus_per_trial")})
    decision = decide(data, rules)
    print("\n".join(decision.lines()))
    if args.write:
        command = "python -m analysis.pilot " + " ".join(argv if argv is not None else sys.argv[1:])
        atomic_write_text(Path(args.write), study_file(decision, rules, command))
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
