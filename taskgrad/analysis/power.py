r"""Planted data for the claim rules: how often each rule calls a strong effect, and a null one,
contradicted, at a given sample size.

``simulate`` draws window statistics the way a run produces them: per step, each task's
split-half estimate u_kt = mu_k(w) + sigma_k(w) * eps (sigma_k(w) = noise * mu_k(w)), per-step
rewards along a path whose windowed gains can depend on gradient size, |advantage| that can track
mu within a task or across tasks, and two statistics (x1, x2) that can determine mu both within
and across tasks. Then ``operating`` runs a rule on many draws with an effect planted and with it
absent, and counts the outcomes. The same rule code that reads run directories reads these.

``design_of`` reads a group's own size and noise (seeds, windows, tasks, steps per window, the
per-step noise of u relative to its mean, the per-step noise of rewards), so the report can print
each rule's power at the run's own sample size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import numpy as np

from taskgrad.analysis.verdicts import CONTRADICTED, HOLDS, UNDETERMINED, Verdict
from taskgrad.analysis.windows import RunWindows


@dataclass(frozen=True)
class Design:
    """The sample size and noise of a group of runs."""

    seeds: int = 3
    windows: int = 15  # windows per seed (the default run: 150 steps)
    window: int = 10  # measured steps per window
    tasks: int = 4
    noise: float = 3.0  # per-step sd of u over its mean (the runs here: about 2-5)
    reward_noise: float = 0.08  # per-step sd of a task's mean batch reward


@dataclass(frozen=True)
class Effect:
    """What is planted (zero: absent)."""

    imbalance: float = 10.0  # max/min of the tasks' mean squared norms
    gain_slope: float = 0.0  # gain per window per sd of log mu across tasks (+: big grad gains)
    gain_sd: float = 0.01  # task-to-task variation of gains unrelated to the gradient
    adv_within: float = 0.0  # corr of window |A| with log mu within a task (0..1)
    adv_across: float = 0.0  # across tasks, |A| means follow log mu (0..1)
    explained: float = 0.0  # share of the tasks' log mu spread set by x1, x2 (0..1)
    extra: dict = field(default_factory=dict)


def simulate(design: Design, effect: Effect, rng: np.random.Generator) -> list[RunWindows]:
    d, e = design, effect
    k, w, s = d.tasks, d.windows, d.window
    log_mu = np.linspace(0.0, math.log(e.imbalance), k)  # [K] task scale, fixed across seeds
    spread = log_mu.std() or 1.0
    z_task = (log_mu - log_mu.mean()) / spread  # [K]
    # x1: a statistic whose task means follow log mu with weight sqrt(explained), and which moves
    # log mu within a task with the same effect (explained -> 1: x1 sets the imbalance)
    x_task = math.sqrt(e.explained) * z_task + math.sqrt(1 - e.explained) * rng.standard_normal(k)
    out = []
    for seed in range(d.seeds):
        decay = np.exp(-1.5 * np.arange(w) / w)  # [W] norms fall over training
        zeta = rng.standard_normal((w, k))  # within-task fluctuation of log mu
        x1 = x_task[None] + rng.standard_normal((w, k))
        centred = e.explained * x1 + (1 - e.explained) * z_task[None]
        log_mu_w = log_mu.mean() + spread * centred + 0.3 * zeta  # [W, K]
        mu = np.exp(log_mu_w) * decay[:, None] * 1e-3  # [W, K]
        u = mu[:, None, :] * (1 + d.noise * rng.standard_normal((w, s, k)))  # [W, S, K]
        naive = np.abs(u) + d.noise * mu[:, None, :]
        # rewards: a path whose per-window gain may follow the gradient's size across tasks
        z_w = (log_mu_w - log_mu_w.mean(1, keepdims=True)) / log_mu_w.std(1, keepdims=True)
        gains = 0.01 + e.gain_slope * z_w + e.gain_sd * rng.standard_normal((w, k))
        level = 0.3 + np.cumsum(np.vstack([np.zeros((1, k)), gains[:-1]]), 0)  # [W, K]
        reward = level[:, None, :] + d.reward_noise * rng.standard_normal((w, s, k))
        adv_w = e.adv_within * zeta + math.sqrt(1 - e.adv_within**2) * rng.standard_normal((w, k))
        adv_t = e.adv_across * z_task + math.sqrt(1 - e.adv_across**2) * rng.standard_normal(k)
        abs_adv = 0.5 + 0.05 * adv_t[None] + 0.02 * adv_w
        stats = {
            "reward": reward.mean(1),
            "abs_advantage": abs_adv,
            "x1": x1,
            "x2": rng.standard_normal((w, k)),
        }
        out.append(_windows(d, seed, u, naive, stats))
    return out


def _windows(d: Design, seed: int, u, naive, stats) -> RunWindows:
    w, s, k = u.shape
    tasks = [f"t{i}" for i in range(k)]
    run = SimpleNamespace(tasks=tasks, steps=w * s, seed=seed)
    starts = np.arange(w) * s + 1
    inner = np.zeros((w, k, k))
    idx = np.arange(k)
    inner[:, idx, idx] = u.sum(1)
    return RunWindows(
        run, starts, starts + s - 1, np.full((w, k), float(s)), u.sum(1), (u**2).sum(1),
        naive.sum(1), (u == 0).sum(1).astype(float), (u < 0).sum(1).astype(float), inner,
        u.sum(1) / k, u.sum(1).sum(1), None, stats,
    )  # fmt: skip


@dataclass
class Operating:
    """How often each outcome came out, with an effect planted and with it absent."""

    planted: dict[str, float]  # outcome -> share of simulations
    null: dict[str, float]
    sims: int

    @property
    def power(self) -> float:
        return self.planted[CONTRADICTED]

    @property
    def false_positive(self) -> float:
        return self.null[CONTRADICTED]

    def text(self) -> str:
        return (
            f"contradicted {100 * self.power:.0f}% with the effect planted, "
            f"{100 * self.false_positive:.0f}% without ({self.sims} simulations)"
        )


def rates(verdicts: list[Verdict]) -> dict[str, float]:
    n = len(verdicts)
    return {
        o: sum(v.outcome == o for v in verdicts) / n for o in (HOLDS, CONTRADICTED, UNDETERMINED)
    }


def operating(
    rule: Callable[[list[RunWindows]], Verdict],
    design: Design,
    planted: Effect,
    null: Effect,
    sims: int = 200,
    seed: int = 0,
) -> Operating:
    rng = np.random.default_rng(seed)
    a = [rule(simulate(design, planted, rng)) for _ in range(sims)]
    b = [rule(simulate(design, null, rng)) for _ in range(sims)]
    return Operating(rates(a), rates(b), sims)


def design_of(windows: list[RunWindows]) -> Design:
    """The group's own size and noise (medians over tasks and windows)."""
    n_w = int(np.median([len(w.starts) for w in windows]))
    steps = float(np.median([np.median(w.n) for w in windows]))
    rel, rew = [], []
    for w in windows:
        mean = w.u
        with np.errstate(invalid="ignore", divide="ignore"):
            sd = np.sqrt(np.clip((w.u_sq - w.n * mean**2) / (w.n - 1), 0, None))
            rel += list((sd / np.abs(mean)).ravel())
    rel = np.array(rel)
    noise = float(np.nanmedian(rel[np.isfinite(rel)])) if np.isfinite(rel).any() else 3.0
    return Design(
        seeds=len(windows),
        windows=max(n_w, 2),
        window=max(int(steps), 2),
        tasks=len(windows[0].tasks),
        noise=min(noise, 20.0),
        reward_noise=_reward_noise(windows) if not rew else float(np.median(rew)),
    )


def _reward_noise(windows: list[RunWindows]) -> float:
    """Per-step sd of a task's batch reward, from the spread of window means across windows'
    neighbours (a rough figure: the reports use it only to size the simulations)."""
    diffs = []
    for w in windows:
        r = w.stats.get("reward")
        if r is not None and len(r) > 2:
            diffs += list((np.diff(r, 2, axis=0) / math.sqrt(6)).ravel())
    diffs = np.array(diffs)
    diffs = diffs[np.isfinite(diffs)]
    steps = float(np.median([np.median(w.n) for w in windows]))
    return float(np.std(diffs) * math.sqrt(steps)) if diffs.size > 3 else 0.08


# The planted effects each rule is judged against (stated in advance, printed in the report).
PLANTED = {
    "a": (Effect(imbalance=2.0), Effect(imbalance=30.0)),  # 2x contradicts, 30x is the claim
    "b": (Effect(gain_slope=0.04), Effect(gain_slope=-0.04)),  # big grad gains most / least
    "c": (Effect(gain_slope=0.04), Effect(gain_slope=0.0)),  # gain follows grad / unrelated
    "d": (Effect(adv_within=0.0, adv_across=0.9), Effect(adv_within=0.9, adv_across=0.0)),
    "e": (Effect(explained=1.0), Effect(explained=0.0)),  # stats set all of it / none
}


def with_size(design: Design, seeds: int) -> Design:
    return replace(design, seeds=seeds)
