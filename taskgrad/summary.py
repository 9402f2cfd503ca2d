"""A run's final numbers, from its metric records: what ``summary.json`` holds."""

from __future__ import annotations

from taskgrad import metrics as M
from taskgrad.stats import spearman


def summarize(records: list[dict], tasks: list[str]) -> dict:
    """Final numbers of a run: held-out accuracy at start and end, imbalance, proxy agreement."""
    evals = [r for r in records if M.EVAL_MEAN in r]
    summary: dict = {"steps": max((r["step"] for r in records), default=0), "tasks": tasks}
    if evals:
        first, last = evals[0], evals[-1]
        summary["eval_start"] = {t: first.get(M.eval_key(t)) for t in tasks}
        summary["eval_end"] = {t: last.get(M.eval_key(t)) for t in tasks}
    full, proxy = [], []
    for r in records:
        for t in tasks:
            a = r.get(M.grad_key("full", t, "sqnorm_unbiased"))
            b = r.get(M.grad_key("proxy", t, "sqnorm_unbiased"))
            if a is not None and b is not None:
                full.append(a)
                proxy.append(b)
    if full:
        summary["proxy_vs_full_spearman"] = spearman(full, proxy)
    key = M.grad_scope_key("full", "imbalance")
    ratios = [r[key] for r in records if r.get(key) is not None]
    if ratios:
        summary["imbalance_median"] = sorted(ratios)[len(ratios) // 2]
    times = [r[M.time_key("step")] for r in records if M.time_key("step") in r]
    if times:
        summary["seconds_per_step_median"] = sorted(times)[len(times) // 2]
    return summary
