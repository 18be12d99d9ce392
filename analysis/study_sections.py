"""The sections of results.md that a study's design fixes: its pre-registration, primary table, evidence, proxies.

A pilot (``pilot=True``) has no pre-registration: its comparisons are labelled exploratory, and its page says what
it decides for the main study (:mod:`analysis.pilot`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from analysis.md import num, p_value, ratio_words, table
from analysis.pilot import decide
from analysis.study import power_statement, primary_verdict
from analysis.study_data import StudyData
from ess.errors import ConfigError
from ess.space.derive import identity_share

PARTS = ("intra", "history", "input")


def part_identity_share(genotype: Any, part: str) -> float:
    """``part``'s identity share; NaN for an inter cell without nodes (no edge to count)."""
    if part != "intra" and not getattr(genotype, part).nodes:
        return math.nan
    return identity_share(genotype, (part,))


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def evidence_rows(summary: Mapping[str, Any], genotypes: Mapping[tuple[str, int], Any]) -> list[dict[str, Any]]:
    """Per search arm with evidence: searches, seed agreement against random genotypes (all searched choices and
    per part) with its p, stability over the last half, the retrained genotypes' identity share per searched part,
    and the mean search minutes (ranking included)."""
    rows = []
    for arm, e in (summary.get("evidence") or {}).items():
        agreement = e.get("agreement") or {}
        parts = agreement.get("parts", {})
        mine = [g for (a, _), g in genotypes.items() if a == arm]
        searched = [t for t in summary.get("trials", []) if t.get("arm") == arm and t.get("kind") == "search"]
        row: dict[str, Any] = {"arm": arm, "searches": e.get("searches", len(searched))}
        overall = agreement.get("overall")
        row["agree"] = (f"{overall['observed']:.0%} vs {overall['null_mean']:.0%}" if overall else "-")
        row["p"] = p_value(overall["p"]) if overall else "-"
        for part in PARTS:
            a = parts.get(part)
            row[f"agree_{part}"] = f"{a['observed']:.0%} vs {a['null_mean']:.0%}" if a else "-"
            shares = [part_identity_share(g, part) for g in mine] if a else []
            row[f"identity_{part}"] = num(_mean(shares), 2)
        row["changed"] = "-" if e.get("changed_epoch_share") is None else f"{e['changed_epoch_share']:.0%}"
        row["kept"] = "-" if e.get("kept_from_middle") is None else f"{e['kept_from_middle']:.0%}"
        row["minutes"] = num(_mean([t.get("search_seconds") for t in searched]) / 60, 0)
        ranked = [t for t in searched if t.get("rank_seconds") is not None]
        row["ranking"] = (f"{num(statistics.median(t['rank_seconds'] for t in ranked), 0)} s for "
                          f"{num(statistics.median(t['rank_candidates'] for t in ranked), 0)}" if ranked else "-")
        rows.append(row)
    return rows


EVIDENCE_COLUMNS = [
    ("arm", "arm"), ("searches", "searches"), ("agree: all (vs random)", "agree"), ("p", "p"),
    ("intra", "agree_intra"), ("history", "agree_history"), ("input", "agree_input"),
    ("changed epochs", "changed"), ("kept from middle", "kept"), ("identity: intra", "identity_intra"),
    ("history", "identity_history"), ("input", "identity_input"), ("search min", "minutes"),
    ("ranking (median)", "ranking")]


def _seeds(seeds: Sequence[int]) -> str:
    """``101-110`` for a run of consecutive seeds, else the list."""
    seeds = list(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _epochs(n: Any) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _tokens(n: Any) -> str:
    return "the whole training set" if not n else f"the first {int(n):,} training tokens"


def budget_lines(summary: Mapping[str, Any]) -> list[str]:
    """The planned n per arm and the budget of every stage (``summary['budget']``, from the study's job.yaml)."""
    budget, design = summary.get("budget"), summary.get("design") or {}
    if not budget:
        return []
    ran = [a["arm"] for a in summary.get("arms", [])]
    primary = [a for a in dict.fromkeys(a for pair in design.get("primary", []) for a in pair.split(":"))
               if a in ran or not ran]
    others = [a for a in ran if a not in primary]
    seeds, first = budget["seeds"], budget.get("exploratory_seeds") or 0
    n = (f"- n per arm (planned): {len(seeds)} seeds ({_seeds(seeds)}) for the primary arms ({', '.join(primary)})"
         + (f"; the first {first} for the exploratory arms ({', '.join(others)})" if others and 0 < first < len(seeds)
            else f" and for every other arm ({', '.join(others)})" if others else "")
         + ". The main table gives the n reached.")
    search, train, random, transfer = (budget[k] for k in ("search", "train", "random", "transfer"))
    stages = budget.get("stages") or []
    size = f"the parameter count of {train['match_params']}" if train.get("match_params") else \
        f"{train.get('emsize')} units"
    corpus = {"ptb": "PTB", "wikitext-2": "WikiText-2"}.get(search.get("dataset"), search.get("dataset"))
    parts = [f"search: {_epochs(search.get('epochs'))} on {_tokens(search.get('max_train_tokens'))} of "
             f"{corpus} at {search.get('emsize')} units, batch {search.get('batch_size')}, BPTT "
             f"{search.get('bptt')}; rsws ranks {search.get('rank_samples'):,} genotypes by shared-weight loss",
             f"retrain: {_epochs(train.get('epochs'))} on {_tokens(train.get('max_train_tokens'))} at {size}, batch "
             f"{train.get('batch_size')}, epoch chosen on the `{train.get('valid_part')}` validation tokens"]
    if "random" in stages:
        parts.append(f"random: the best of {random['k']} random genotypes by a retrain of {_epochs(random['epochs'])}, "
                     "then retrained as the others (the screen counted as its search)")
    if "transfer" in stages:
        parts.append(f"transfer (exploratory): {', '.join(transfer['tasks'])}, {_epochs(transfer['epochs'])}, seeds "
                     f"{_seeds(budget.get('transfer_seeds') or seeds)}")
    if "wikitext2" in stages:
        parts.append(f"WikiText-2 (exploratory): the cells of seed {seeds[0]} retrained")
    cpus = budget.get("cpus_per_trial")
    return [n, "- Budget of every stage: " + "; ".join(parts) + "."
            + (f" CPUs per trial: {num(cpus, 0)}; GPUs per trial: {num(budget.get('gpus_per_trial') or 0, 0)}."
               if cpus else "")
            + " Tokens and wall-clock seconds per arm, screening and ranking included: main table and Cost."]


def _design(summary: Mapping[str, Any]) -> list[str]:
    design = summary["design"]
    return ["## Design (pre-registered)", "",
            f"- Primary comparisons: {', '.join(p.replace(':', ' vs ') for p in design['primary'])}; Holm over "
            f"these {len(design['primary'])} only. Every other comparison below is exploratory.",
            f"- Primary metric: `{design['metric']}` of the retrained model (chosen by nothing: architectures "
            "are selected on validation tokens that neither fit them nor report them).",
            f"- Family-wise alpha {design['alpha']}, target: a {100 * design['target_gain']:.0f}% relative gain "
            f"with {100 * design['power']:.0f}% power"
            + (f" at the pilot's seed sd of the log metric {100 * design['noise_sd']:.1f}% ({design['pilot']})"
               if design.get("noise_sd") else "") + ".",
            *budget_lines(summary),
            f"- Stopping rule: {design['stopping']}.", ""]


def _primary(primary: Mapping[str, Any], pilot: bool) -> list[str]:
    head = (["## The study's comparisons at the pilot's seeds (exploratory)", "",
             "The pilot compares nothing: these are the main study's comparisons on the pilot's few seeds, shown "
             "for the noise they carry. Ratio of geometric means (a / b) with its 95% interval (Welch on log "
             "values)."] if pilot else
            ["## Primary comparisons", "",
             "Ratio of geometric means (a / b) of the primary metric with its 95% interval (Welch on log values), "
             "Holm-adjusted over the pre-registered comparisons."])
    return [*head, "",
            table(primary["comparisons"], [
                ("a", "arm_a"), ("b", "arm_b"), ("n", lambda r: f"{r['n_a']} + {r['n_b']}"),
                ("ratio [95% CI]", lambda r: f"{r['ratio']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
                                   if math.isfinite(r["ci_low"]) else "-"),
                ("p", lambda r: p_value(r["p_value"])), ("Holm p", lambda r: p_value(r["p_holm"])),
                ("verdict", primary_verdict)]),
            *([] if pilot else [
                power_statement(primary["power"]) + " A study at another scale (the `study-gpu` preset's "
                "included) has noise of its own: it takes its seeds from its own pilot (`python -m analysis.pilot`, "
                "docs/study-design.md section 4).", ""])]


def primary_reading(summary: Mapping[str, Any]) -> list[str]:
    """One paragraph per primary comparison: the geometric means, the ratio with its interval, n and p, and what
    that interval says at the design's target gain and level."""
    design, primary = summary["design"], summary["primary"]
    metric, target, alpha = primary["metric"], design["target_gain"], design["alpha"]
    means = {a["arm"]: a.get(f"{metric}_geo_mean") for a in summary.get("arms", [])}
    out = []
    for c in primary["comparisons"]:
        a, b = c["arm_a"], c["arm_b"]
        head = f"**{a} vs {b}** (primary)"
        verdict = primary_verdict(c)
        if verdict.startswith("no comparison"):
            out += [f"{head}: {verdict} (n = {c['n_a']} and {c['n_b']}).", ""]
            continue
        words = ratio_words(a, b, c["ci_low"], c["ci_high"])
        text = (f"{head}: geometric-mean `{metric}` {num(means.get(a))} vs {num(means.get(b))}; ratio "
                f"{c['ratio']:.3f}, 95% interval [{c['ci_low']:.3f}, {c['ci_high']:.3f}] (n = {c['n_a']} and "
                f"{c['n_b']}; Welch on log values p = {p_value(c['p_value'])}, Holm p = {p_value(c['p_holm'])}). ")
        if c["ci_low"] <= 1 <= c["ci_high"]:
            text += f"{words[0].upper()}{words[1:]}. "
            if c["ci_low"] > 1 - target and c["ci_high"] < 1 / (1 - target):
                text += f"The interval excludes a {100 * target:g}% difference either way."
            else:
                text += (f"A {100 * target:g}% difference is inside that interval: this study neither shows nor "
                         "excludes it.")
        else:
            text += (f"{words} (Holm p < {alpha:g}: a finding at the pre-registered level)."
                     if c["significant"] else
                     f"Unadjusted, {words}, but Holm over the "
                     f"{len(primary['comparisons'])} comparisons gives p = {p_value(c['p_holm'])} >= {alpha:g}: "
                     "not a finding at the pre-registered level.")
        out += [text, ""]
    return out


def _evidence(summary: Mapping[str, Any], genotypes: Mapping[tuple[str, int], Any]) -> list[str]:
    evidence = summary.get("evidence") or {}
    return ["## Did the searches find something?", "",
            "Per search arm (docs/method.md section 11): agreement of the seeds' genotypes against random "
            "genotypes of the same space (share of seed pairs and choices that agree, observed vs the mean of "
            "random draws, with its p; per searched part), the stability of each search's genotype over its last "
            "half (share of epochs at which it changed; share of its middle epoch's choices it kept; mean over "
            "searches), the retrained genotypes' `identity` share per searched part, the mean search time "
            "(ranking included) and, where a search ranked genotypes by shared-weight loss, the median seconds "
            "of that ranking and the genotypes it ranked.", "",
            table(evidence_rows(summary, genotypes), EVIDENCE_COLUMNS),
            *[f"- **{arm}**: {e['statement']}" for arm, e in evidence.items()], ""]


def _tau(tau: Mapping[str, Any]) -> list[str]:
    md = ["## Ranking quality of the proxies", "",
          f"{len(tau['genotypes'])} random joint genotypes retrained at the study's budget "
          f"({tau['short_epochs']} epoch(s)) and {tau['long_epochs']} epochs (seed {tau['seed']}); Kendall's "
          "tau-b against the long retrain's valid perplexity, with its 95% interval.", ""]
    if tau.get("short_vs_long"):
        md.append(f"- the study's retrain: {tau['short_vs_long']['statement']}")
    scored = sorted((s for s in tau.get("supernets", []) if s.get("vs_long")), key=lambda s: (s["arm"], s["seed"]))
    if not scored:
        return [*md, ""]
    first: dict[tuple[float, ...], str] = {}
    rows = []
    for s in scored:
        label, key = f"{s['arm']} seed {s['seed']}", tuple(round(float(v), 9) for v in s.get("losses", []))
        twin = first.setdefault(key, label) if key else label
        t = s["vs_long"]
        rows.append({"arm": s["arm"], "seed": s["seed"], "tau": num(t["tau"], 2),
                     "interval": f"[{num(t['interval'][0], 2)}, {num(t['interval'][1], 2)}]" if t.get("interval")
                     else "-", "p": p_value(t["p"]), "same": "" if twin == label else twin})
    arms = dict.fromkeys(s["arm"] for s in scored)
    medians = "; ".join(f"{a} {num(statistics.median(s['vs_long']['tau'] for s in scored if s['arm'] == a), 2)}"
                        for a in arms)
    md += [f"- each joint-space supernet's shared-weight loss (median tau per arm: {medians}):", "",
           table(rows, [("arm", "arm"), ("seed", "seed"), ("Kendall tau-b", "tau"), ("95% interval", "interval"),
                        ("p", "p"), ("same losses as", "same")])]
    if any(r["same"] for r in rows):
        md.append("A supernet with the same losses as another is the same supernet: its arm trains the same "
                  "weights from the same seed and differs only in how it derives its genotype.")
    return [*md, ""]


def _decision(data: StudyData) -> list[str]:
    try:
        lines = decide(data).lines()
    except ConfigError as err:
        lines = [f"no decision: {err}"]
    return ["## What the pilot decides for the main study", "",
            "By the rules of docs/study-design.md section 2 (`python -m analysis.pilot`):", "",
            *[f"- {line}" for line in lines], ""]


def design_sections(data: StudyData, pilot: bool = False) -> list[str]:
    """The design (pre-registered; a pilot has none and says what it decides), the primary comparisons, the
    evidence that the searches found something and the ranking quality of the proxies, as far as ``data`` has
    them."""
    summary = data.summary
    md: list[str] = []
    if pilot:
        md += _decision(data)
    elif summary.get("design"):
        md += _design(summary)
    primary = summary.get("primary")
    if primary and primary["comparisons"]:
        md += _primary(primary, pilot)
        if not pilot and summary.get("design"):
            md += primary_reading(summary)
    if summary.get("evidence"):
        md += _evidence(summary, data.genotypes)
    tau = summary.get("tau") or {}
    if tau.get("short_vs_long") or tau.get("supernets"):
        md += _tau(tau)
    return md
