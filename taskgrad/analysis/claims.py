"""The paper's claims, each checked against the runs by a rule stated before looking at them.

Every cell but the paper's own numbers (quoted from shared/reference/PAPER.md) is computed from
the run directories. A claim is "undetermined" when a statistic it needs is undefined (too few
tasks, windows or seeds). The rules are ``RULES`` below, printed in the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from taskgrad.analysis.analyse import GroupAnalysis
from taskgrad.analysis.document import Document
from taskgrad.analysis.explain import ratio
from taskgrad.analysis.runs import config_key
from taskgrad.analysis.stats import fmt, fmt_ci, fmt_explained, times

ABLATION = "grad_proportional"
RULES = {
    "a": "holds if the median over seeds of the per-seed median (over steps) imbalance ratio is "
    ">= 10, the low end of the paper's 10-30x",
    "b": "holds if, in fewer than half of the (seed, window) units, the task with the largest mean "
    "squared norm before the window has the largest learning gain over it",
    "c": "holds unless the 95% bootstrap interval of the pooled Spearman rho between window "
    "gradient and gain (across tasks) lies entirely above 0",
    "d": "holds if the within-task rho of |advantage| and squared norm has a 95% interval above 0 "
    "and the across-task rho's 95% interval does not lie above 0",
    "e": "holds if reward and reward variance, acting across tasks as they act within them, "
    "explain less than half of the spread of the tasks' mean ln squared norm (imbalance "
    "explained < 0.5)",
    "f": "holds if (i) the same holds for log response and prompt length and (ii) where the "
    "mixture was also trained under the other loss aggregations, the median imbalance under each "
    "is at least half the token_mean one",
    "g": "holds unless the 95% interval of the difference in final mean held-out accuracy "
    "(grad_proportional - uniform; t over seeds, or binomial with one seed) lies above 0",
}


@dataclass
class Claim:
    key: str
    claim: str
    mixture: str
    paper: str
    ours: str
    verdict: str  # "holds" | "does not hold" | "undetermined"

    def row(self) -> list[str]:
        return [
            f"({self.key}) {self.claim}",
            self.mixture,
            self.paper,
            self.ours,
            RULES[self.key],
            self.verdict,
        ]


def verdict(ok: bool | None) -> str:
    return "undetermined" if ok is None else ("holds" if ok else "does not hold")


def _finite(*values: float) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def is_math(a: GroupAnalysis) -> bool:
    return a.group.cfg("preset") == "math3"


def claim_a(a: GroupAnalysis) -> Claim:
    im = a.imbalance
    paper = "up to 33× (Arithmetic)" if is_math(a) else "10-30× (Code ~13-20× MATH (?))"
    ours = (
        f"median {times(im.median)} (per seed {', '.join(fmt(v, 1) for v in im.per_seed_median)})"
        "; "
        f"ratio of training means {times(im.mean_ratio)}; largest: {im.largest}"
    )
    ok = im.median >= 10 if _finite(im.median) else None
    return Claim("a", "imbalance exists", a.label, paper, ours, verdict(ok))


def claim_b(a: GroupAnalysis) -> Claim:
    lt = a.largest
    paper = (
        "Arithmetic (largest gradient): gain collapses to ~0 while the others keep gaining"
        if is_math(a)
        else "Code (largest gradient): lowest gain early on"
    )
    ours = (
        f"largest-gradient task had the largest gain in {fmt(100 * lt.match_share, 0)}% and "
        f"the smallest in {fmt(100 * lt.lowest_share, 0)}% of {len(lt.ranks)} units"
    )
    ok = lt.match_share < 0.5 if lt.ranks else None
    return Claim(
        "b", "largest-gradient task is not the largest-gain task", a.label, paper, ours, verdict(ok)
    )


def claim_c(a: GroupAnalysis) -> Claim:
    r = a.rank
    ok = not (r.lo > 0) if _finite(r.rho, r.lo, r.hi) else None
    return Claim(
        "c",
        "gradient size does not rank learning gain",
        a.label,
        "large-gradient tasks gain similarly or much less (no number)",
        f"pooled rho {fmt_ci(r.rho, r.lo, r.hi)} over {r.n_units} units",
        verdict(ok),
    )


def claim_d(a: GroupAnalysis) -> Claim:
    v = a.advantage
    ours = (
        f"within rho {fmt_ci(v.within, v.within_lo, v.within_hi)}; "
        f"across rho {fmt_ci(v.across, v.across_lo, v.across_hi)}"
    )
    ok = None
    if _finite(v.within_lo, v.across_lo):
        ok = v.within_lo > 0 and not v.across_lo > 0
    return Claim(
        "d",
        "|advantage| tracks the gradient within tasks, not across",
        a.label,
        "within: grows with |A|; across: no relation (no number)",
        ours,
        verdict(ok),
    )


def _between(a: GroupAnalysis, prefix: str) -> float:
    return next(
        (r.imbalance_explained for r in a.regressions if r.name.startswith(prefix)), math.nan
    )


def claim_e(a: GroupAnalysis) -> Claim:
    b = _between(a, "reward")
    ours = f"imbalance explained by reward, reward_var: {fmt_explained(b)}"
    return Claim(
        "e",
        "reward level does not explain the imbalance",
        a.label,
        "no U-shaped relation with difficulty (no number)",
        ours,
        verdict(b < 0.5 if _finite(b) else None),
    )


def claim_f(a: GroupAnalysis, variants: list[GroupAnalysis]) -> Claim:
    b = _between(a, "length")
    parts = [f"imbalance explained by lengths: {fmt_explained(b)}"]
    length_share = a.shares.get("length normalisation^2", math.nan)
    parts.append(f"length normalisation carries {fmt(length_share)} of the ln-variance of u")
    ok = b < 0.5 if _finite(b) else None
    base = a.imbalance.median
    for v in variants:
        m = v.imbalance.median
        parts.append(
            f"{v.group.cfg('grpo.loss_agg')}: median {times(m)} vs {times(base)}"
            f" (S ratio {times(ratio(v.decomposition.score))})"
        )
        if ok is not None:
            ok = ok and (m >= base / 2 if _finite(m, base) else False)
    if not variants:
        parts.append("loss-aggregation runs: not run")
    return Claim(
        "f",
        "length does not explain the imbalance",
        a.label,
        "no clear correlation, yet large-gradient tasks are the short ones",
        "; ".join(parts),
        verdict(ok),
    )


def claim_g(ablation: GroupAnalysis, base: GroupAnalysis) -> Claim | None:
    if "mean" not in ablation.accuracy.index or "mean" not in base.accuracy.index:
        return None
    x, y = ablation.accuracy.loc["mean"], base.accuracy.loc["mean"]
    diff = x.end - y.end
    half = math.hypot(x.hi - x.end, y.hi - y.end)
    ours = (
        f"mean accuracy {fmt(x.end)} vs uniform {fmt(y.end)}: difference "
        f"{fmt_ci(diff, diff - half, diff + half)}"
    )
    ok = not (diff - half > 0) if _finite(diff, half) else None
    return Claim(
        "g",
        "gradient-proportional sampling does not beat uniform",
        base.label,
        "no gain over uniform; can hurt the average (?)",
        ours,
        verdict(ok),
    )


def is_ablation(a: GroupAnalysis) -> bool:
    return a.group.cfg("balance.strategy") == ABLATION


def _without(a: GroupAnalysis, section: str, keys: tuple[str, ...]) -> str:
    cfg = dict(a.group.config)
    cfg[section] = {**cfg.get(section, {}), **dict.fromkeys(keys)}
    return config_key(cfg)


def collect(items: list[GroupAnalysis]) -> list[Claim]:
    """Claims (a)-(e) per mixture, (f) with its loss-aggregation variants, (g) per ablation."""
    mixes = [
        a for a in items if a.group.cfg("grpo.loss_agg") == "token_mean" and not is_ablation(a)
    ]
    out: list[Claim] = []
    for a in mixes:
        out += [claim_a(a), claim_b(a), claim_c(a), claim_d(a), claim_e(a)]
        key = _without(a, "grpo", ("loss_agg", "loss_constant"))
        variants = [
            v
            for v in items
            if v is not a
            and not is_ablation(v)
            and _without(v, "grpo", ("loss_agg", "loss_constant")) == key
        ]
        out.append(claim_f(a, variants))
    for ab in filter(is_ablation, items):
        key = _without(ab, "balance", ("strategy", "options"))
        base = next(
            (
                b
                for b in items
                if b is not ab and _without(b, "balance", ("strategy", "options")) == key
            ),
            None,
        )
        claim = claim_g(ab, base) if base is not None else None
        out += [claim] if claim else []
    return out


def claims_section(doc: Document, items: list[GroupAnalysis]) -> None:
    """The first table of a reproduce report."""
    doc.heading("The paper's claims, checked")
    claims = collect(items)
    doc.table(
        ["claim", "mixture", "paper", "ours", 'rule for "holds" (stated in advance)', "verdict"],
        [c.row() for c in claims],
    )
    doc.para(
        "Paper: Wu et al., Imbalanced Gradients in RL Post-Training of Multi-Task LLMs (EACL "
        "Findings 2026), numbers as summarised in PAPER.md ((?): read off figures). Ours: "
        "computed from the run directories of this report, on the embedded tiny model; the "
        "paper used 3-7B models, so a claim that does not hold here is a statement about this "
        "setting, not a refutation.",
        note=True,
    )
