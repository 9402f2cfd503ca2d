"""The comparison harness on synthetic run directories with planted accuracy differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taskgrad.analysis.compare import compare, plan, score_run, t_interval
from tests.synthetic_runs import write_run

STEPS = 20


def planted(path, strategy: str, seed: int, lift: float):
    """Rewards rise linearly from .3 to .6 for every task, plus ``lift`` for this strategy."""
    t = np.linspace(0.3, 0.6, STEPS)[:, None] + lift + 0.01 * seed  # [T, 1]
    rewards = np.repeat(t, 4, axis=1)  # [T, K]
    rewards[:, 3] -= 0.2  # the worst task
    overrides = (f"balance.strategy={strategy}", "eval.every=5")
    return write_run(path, seed=seed, steps=STEPS, overrides=overrides, arrays={"reward": rewards})


def test_plan_matches_compute_and_reserves_keys():
    runs = plan(["uniform", "mgda"], 2, "default", ["steps=7"])
    assert [r.name for r in runs] == ["uniform-s0", "uniform-s1", "mgda-s0", "mgda-s1"]
    assert all("steps=7" in r.overrides for r in runs)
    with pytest.raises(ValueError, match="reserved"):
        plan(["uniform"], 1, "default", ["seed=3"])


def test_score_run_by_hand(tmp_path):
    path = planted(tmp_path / "uniform-s0", "uniform", 0, 0.0)
    s = score_run(path, target=0.2)
    # last eval (step 20): reward .6 -> accuracy .5 for three tasks, .3 for the worst
    assert s.final_mean == pytest.approx((3 * 0.5 + 0.3) / 4)
    assert s.final_worst == pytest.approx(0.3)
    assert math.isfinite(s.auc) and s.auc < s.final_mean  # a rising curve lies below its end
    # worst-task accuracy = reward - .3 = .3 * (step - 1) / 19: .142 at step 10, .221 at step 15
    assert s.steps_to_target == 15


def test_t_interval_by_hand():
    m, lo, hi = t_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(.975, 2) = 4.303 -> half-width 4.303 / sqrt(3) = 2.484
    assert (
        m == 2.0
        and hi - m == pytest.approx(2.484, abs=1e-3)
        and m - lo == pytest.approx(2.484, abs=1e-3)
    )


def test_compare_reuses_runs_and_recovers_the_planted_lift(tmp_path):
    runs = tmp_path / "out" / "runs"
    for seed in (0, 1):
        planted(runs / f"uniform-s{seed}", "uniform", seed, 0.0)
        planted(runs / f"static-s{seed}", "static", seed, 0.1)
    out = compare(
        ["uniform", "static"],
        seeds=2,
        out=tmp_path / "out",
        overrides=[f"steps={STEPS}", "eval.every=5"],
    )
    table = (out / "compare.md").read_text()
    static_row = next(line for line in table.splitlines() if line.startswith("| static"))
    # +0.1 reward -> +10 accuracy points on every seed: paired difference 10.0, zero width
    assert "| 10.0 [10.0, 10.0] | 10.0 [10.0, 10.0] |" in static_row
    assert (out / "report.html").exists()


def test_cli_compare_unknown_strategy_is_one_line(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "taskgrad.cli", "compare", "--strategies", "uniform,nope"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: unknown balancing strategy 'nope'; valid: ")
    assert len(out.stderr.strip().splitlines()) == 1
