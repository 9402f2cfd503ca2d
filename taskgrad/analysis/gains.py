r"""Learning gain and whether gradient size predicts it (Wu et al. 2026, Figure 1; PAPER.md).

Notation: u_k(t) is the unbiased squared gradient norm of task k at step t
(``grad/full/<k>/sqnorm_unbiased``: the inner product of the gradients of two disjoint halves of
the task's prompts), r_k(t) its training reward (``task/<k>/reward``), T the last step.

**Windows and learning gain.** At a centre c with window s,

    gain_k(c) = mean r_k(c+1 .. c+s) - mean r_k(c-s+1 .. c)
    grad_k(c) = mean u_k(c-s+1 .. c)                   (the gradient *before* the gain)

at three centres near T/8, T/2 and 7T/8: the logged centre (``gain/window_center``) nearest to
each, with s = diagnostics.gain_window; when none was logged (short runs) the centre is
round(f T) and s shrinks to fit, min(s, c, T - c). Gains are recomputed from rewards, which
equals the logged ``gain/<k>/window``; the logged value is used when rewards are absent.

**Does gradient size rank gain?** For each (seed, window) unit, Spearman's rho across tasks of
grad_k(c) and gain_k(c); the pooled rho is the mean over units, so that the joint fall of norms
and gains over training cannot create a correlation. The 95% interval is a percentile bootstrap
(2000 replicates) that resamples, jointly: the tasks (with replacement, one draw shared by every
unit of a replicate), the (seed, window) units (with replacement) and, inside each unit, the
steps of the before- and after-windows (with replacement; a step's gradient and reward stay
together). Replicates whose rho is undefined (fewer than two distinct tasks drawn) are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from taskgrad import metrics as M
from taskgrad.analysis.runs import Group, Run
from taskgrad.analysis.stats import percentile_ci, quiet, rowwise_spearman, spearman

WINDOW_FRACTIONS = {"1/8": 1 / 8, "1/2": 1 / 2, "7/8": 7 / 8}
REWARD = M.task_key("{task}", "reward")
N_BOOT = 2000


def scope(run: Run) -> str:
    """The main gradient scope: ``full`` unless the buffers held another scope only."""
    return (
        "full"
        if any(c.startswith(M.grad_scope_key("full", "")) for c in run.metrics)
        else str(run.cfg("diagnostics.scope", "full"))
    )


def sq_key(run: Run, stat: str = "sqnorm_unbiased") -> str:
    return M.grad_key(scope(run), "{task}", stat)


# --- windows and gains ---------------------------------------------------------------------------


@dataclass
class Window:
    """One (seed, window) unit: gains after c and gradients before it, per task [K]."""

    run: int
    position: str  # "1/8" | "1/2" | "7/8"
    center: int
    s: int
    gain: np.ndarray  # [K]
    grad: np.ndarray  # [K]
    before: np.ndarray | None  # [s, K] rewards of steps c-s+1..c (None: logged gains only)
    after: np.ndarray | None  # [s, K] rewards of steps c+1..c+s
    grads: np.ndarray  # [s, K] u_k of the before steps


def window_centers(run: Run) -> list[tuple[str, int, int]]:
    """(position, centre, s) near T/8, T/2, 7T/8; duplicates (short runs) are dropped."""
    total, s_cfg = run.steps, int(run.cfg("diagnostics.gain_window", 10) or 1)
    logged = run.column(M.WINDOW_CENTER).dropna().astype(int).to_numpy()
    out, seen = [], set()
    for position, frac in WINDOW_FRACTIONS.items():
        if logged.size:
            center, s = int(logged[np.argmin(np.abs(logged - frac * total))]), s_cfg
        elif total >= 2:
            center = min(max(1, round(frac * total)), total - 1)
            s = max(1, min(s_cfg, center, total - center))
        else:
            continue
        if center not in seen:
            seen.add(center)
            out.append((position, center, s))
    return out


def windows_of(run: Run, index: int = 0) -> list[Window]:
    """The run's (up to three) windows, gains recomputed from rewards where logged."""
    rewards = run.task_frame(REWARD)
    grads = run.task_frame(sq_key(run))
    has_rewards = rewards.notna().any().all()
    out = []
    for position, c, s in window_centers(run):
        grad_rows = grads.reindex(range(c - s + 1, c + 1)).to_numpy()  # [s, K]
        if has_rewards:
            before = rewards.reindex(range(c - s + 1, c + 1)).to_numpy()
            after = rewards.reindex(range(c + 1, c + s + 1)).to_numpy()
            gain = _nanmean0(after) - _nanmean0(before)
        else:
            row = run.metrics.index[run.column(M.WINDOW_CENTER) == c]
            gain = np.array(
                [run.column(M.gain_key(t, "window")).get(row[0], np.nan) for t in run.tasks]
            )
            before = after = None
        out.append(
            Window(
                index, position, c, s, gain, _nanmean0(grad_rows), before, after, grads=grad_rows
            )
        )
    return out


def _nanmean0(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """Means along ``axis`` ignoring NaN; NaN (without a warning) where all are NaN."""
    a = np.asarray(a, dtype=float)
    n = np.isfinite(a).sum(axis=axis)
    total = np.where(np.isfinite(a), a, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def group_windows(group: Group) -> list[Window]:
    return [w for i, run in enumerate(group.runs) for w in windows_of(run, i)]


# --- does gradient size rank learning gain? --------------------------------------------------


@dataclass
class RankResult:
    rho: float
    lo: float
    hi: float
    n_units: int
    n_tasks: int

    def sentence(self, what: str = "gradient size", target: str = "learning gain") -> str:
        """The answer in one plain sentence, decided by the 95% interval."""
        ci = f"rho = {self.rho:.2f}, 95% CI [{self.lo:.2f}, {self.hi:.2f}]"
        if not math.isfinite(self.rho):
            return (
                f"Undetermined: rho is not defined here (gradients not measured, fewer than "
                f"three tasks, or no window fits the run), so {what} cannot rank {target}."
            )
        if not math.isfinite(self.lo):
            return f"Undetermined: rho = {self.rho:.2f} but too few units for an interval."
        if self.lo > 0:
            return f"Yes: across tasks, {what} ranks {target} ({ci})."
        if self.hi < 0:
            return f"No: across tasks, {what} ranks {target} in reverse ({ci})."
        return f"No: across tasks, {what} does not rank {target} ({ci})."


def _unit_replicates(w: Window, tasks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap rho [B] of one unit: steps resampled inside its windows, tasks drawn as given."""
    b = tasks.shape[0]
    idx = rng.integers(w.s, size=(b, w.s))  # [B, s] resampled before-steps
    grad = _nanmean0(w.grads[idx], axis=1)  # [B, s, K] -> [B, K]
    if w.before is not None:
        idx_after = rng.integers(w.s, size=(b, w.s))  # [B, s] resampled after-steps
        gain = _nanmean0(w.after[idx_after], axis=1) - _nanmean0(w.before[idx], axis=1)
    else:
        gain = np.broadcast_to(w.gain, grad.shape)
    x = np.take_along_axis(grad, tasks, axis=1)  # [B, K] the drawn tasks
    y = np.take_along_axis(gain, tasks, axis=1)
    ok = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    rho = np.full(b, np.nan)
    rho[ok] = rowwise_spearman(x[ok], y[ok])
    for r in np.flatnonzero(~ok):  # rare: a task unmeasured in the window
        rho[r] = spearman(x[r], y[r])
    return rho


def rank_gain_by_grad(windows: list[Window], n_boot: int = N_BOOT, seed: int = 0) -> RankResult:
    """Mean over units of Spearman(grad_k, gain_k) across tasks, with the joint bootstrap above."""
    if not windows:
        return RankResult(math.nan, math.nan, math.nan, 0, 0)
    k = windows[0].gain.size
    with quiet():  # NaN when rho is undefined in every unit
        point = np.nanmean([spearman(w.grad, w.gain) for w in windows]) if k >= 3 else np.nan
    rng = np.random.default_rng(seed)
    tasks = rng.integers(k, size=(n_boot, k))  # [B, K] one task draw per replicate
    reps = np.stack([_unit_replicates(w, tasks, rng) for w in windows])  # [U, B]
    units = rng.integers(len(windows), size=(n_boot, len(windows)))  # [B, U]
    with quiet():
        boot = np.nanmean(np.take_along_axis(reps.T, units, axis=1), axis=1)  # [B]
    lo, hi = percentile_ci(boot)
    return RankResult(float(point), lo, hi, len(windows), k)


@dataclass
class LargestTask:
    """How the largest-gradient task of each unit ranks in gain (1 = largest gain)."""

    ranks: list[float]
    n_tasks: int

    @property
    def match_share(self) -> float:
        return float(np.mean([r == 1 for r in self.ranks])) if self.ranks else math.nan

    @property
    def lowest_share(self) -> float:
        return float(np.mean([r == self.n_tasks for r in self.ranks])) if self.ranks else math.nan


def largest_gradient_gain_rank(windows: list[Window]) -> LargestTask:
    """Per unit, the gain rank of the task with the largest gradient (1 = largest gain; ties in
    gain share the mean rank). Units where the largest gradient is tied, or all gains are
    equal, name no such task and are skipped."""
    ranks = []
    for w in windows:
        ok = np.isfinite(w.grad) & np.isfinite(w.gain)
        grad, gain = w.grad[ok], w.gain[ok]
        if ok.sum() < 2 or (grad == grad.max()).sum() > 1 or np.ptp(gain) == 0:
            continue
        top = int(np.argmax(grad))
        ties = (gain == gain[top]).sum() - 1
        ranks.append(float(1 + (gain > gain[top]).sum() + ties / 2))
    return LargestTask(ranks, windows[0].gain.size if windows else 0)
