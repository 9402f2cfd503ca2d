"""Everything the report shows about one configuration, computed once (read by figures, tables).

Gradient statistics come from window estimators (windows.py), the claims' verdicts from their
rules (verdicts.py), explanations from the window-mean GLM (explain.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from taskgrad.analysis import explain, measures, verdicts, windows
from taskgrad.analysis.runs import Group


@dataclass
class GroupAnalysis:
    group: Group
    windows: list[windows.RunWindows]  # per seed: window means of the per-step estimates
    signal: windows.Signal  # pooled U per task, detectability, signal fraction
    imbalance: windows.Imbalance  # pooled max/min over tasks with detectable signal
    shares: pd.DataFrame  # pooled update shares per task
    cosines: dict[str, pd.DataFrame]  # "early" / "late": K x K cosines of pooled sums
    proxy: tuple[float, float, float]  # proxy vs full: mean rho over windows [95% CI]
    units: verdicts.Units  # (seed, window pair) units of the gain rules
    verdicts: dict[str, verdicts.Verdict]  # claims (a)-(e) of this configuration
    advantage: tuple[np.ndarray, np.ndarray]  # within-task and across-task rhos
    explanations: list[explain.Explanation]
    decomposition: pd.DataFrame
    decomposition_shares: dict[str, float]  # across-task log-variance shares
    transfer: dict[int, measures.Transfer]
    accuracy: pd.DataFrame

    @property
    def label(self) -> str:
        return self.group.label


def analyse(group: Group, n_boot: int = windows.N_BOOT, seed: int = 0) -> GroupAnalysis:
    """All findings of one group; bootstrap draws are seeded, so reports are reproducible."""
    ws = windows.group_windows(group)
    sig = windows.signal(ws, n_boot, seed)
    table = explain.decomposition(group)
    explanations = explain.explanations(ws, max(n_boot // 4, 50))
    by_name = {e.name.split()[0]: e for e in explanations}
    found = {
        "a": verdicts.rule_imbalance(ws, n_boot),
        "b": verdicts.rule_largest_lowest(ws),
        "c": verdicts.rule_rank(ws),
        "d": verdicts.rule_advantage(ws),
        "e": verdicts.verdict_of(by_name["reward"]),
    }
    return GroupAnalysis(
        group=group,
        windows=ws,
        signal=sig,
        imbalance=windows.imbalance(ws, sig, n_boot),
        shares=windows.update_shares(ws, n_boot),
        cosines={part: windows.cosines(ws, sig, part) for part in ("early", "late")},
        proxy=windows.proxy_agreement(ws, n_boot),
        units=verdicts.gain_units(ws),
        verdicts=found,
        advantage=verdicts.advantage_rhos(ws),
        explanations=explanations,
        decomposition=table,
        decomposition_shares=explain.log_variance_shares(table),
        transfer=measures.transfer(group),
        accuracy=measures.final_accuracy(group),
    )
