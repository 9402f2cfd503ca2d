"""Everything the report shows about one configuration, computed once (read by figures, tables)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from taskgrad.analysis import explain, gains, measures
from taskgrad.analysis.runs import Group


@dataclass
class GroupAnalysis:
    group: Group
    windows: list[gains.Window]
    rank: gains.RankResult  # pooled over (seed, window) units
    rank_by_position: dict[str, gains.RankResult]  # "1/8" | "1/2" | "7/8"
    largest: gains.LargestTask
    advantage: explain.AdvantageResult
    regressions: list[explain.Regression]
    nonpositive: int  # (seed, step, task) rows with u <= 0, left out of the regressions
    decomposition: pd.DataFrame
    shares: dict[str, float]  # across-task log-variance shares of the decomposition
    imbalance: measures.Imbalance
    noise: pd.Series
    cosines: dict[str, pd.DataFrame] | None
    proxy: tuple[float, list[float]]
    transfer: dict[int, pd.DataFrame]
    accuracy: pd.DataFrame

    @property
    def label(self) -> str:
        return self.group.label


def analyse(group: Group, n_boot: int = gains.N_BOOT, seed: int = 0) -> GroupAnalysis:
    """All findings of one group; bootstrap draws are seeded, so reports are reproducible."""
    windows = gains.group_windows(group)
    by_position = {
        pos: gains.rank_gain_by_grad([w for w in windows if w.position == pos], n_boot, seed)
        for pos in gains.WINDOW_FRACTIONS
        if any(w.position == pos for w in windows)
    }
    regs, nonpositive = explain.regressions(group)
    table = explain.decomposition(group)
    return GroupAnalysis(
        group=group,
        windows=windows,
        rank=gains.rank_gain_by_grad(windows, n_boot, seed),
        rank_by_position=by_position,
        largest=gains.largest_gradient_gain_rank(windows),
        advantage=explain.advantage_relation(group, n_boot, seed),
        regressions=regs,
        nonpositive=nonpositive,
        decomposition=table,
        shares=explain.log_variance_shares(table),
        imbalance=measures.imbalance(group),
        noise=measures.noise_fraction(group),
        cosines=measures.cosine_halves(group),
        proxy=measures.proxy_agreement(group),
        transfer=measures.transfer(group),
        accuracy=measures.final_accuracy(group),
    )
