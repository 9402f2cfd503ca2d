"""The comparison harness on synthetic run directories with planted accuracy differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taskgrad.analysis.compare import (
    TUNE_SEED,
    compare,
    plan,
    ratio_interval,
    score_run,
    static_grid,
    tune_static,
)
from taskgrad.analysis.compare_report import paired_differences
from taskgrad.analysis.reproduce import Planned, RunsFailed, run_all
from taskgrad.analysis.runs import load_run
from taskgrad.stats import mean_ci
from tests.synthetic_runs import write_run

STEPS = 20


def planted(path, strategy: str, seed: int, lift: float, extra: tuple[str, ...] = ()):
    """Rewards rise linearly from .3 to .6 for every task, plus ``lift`` for this strategy."""
    t = np.linspace(0.3, 0.6, STEPS)[:, None] + lift + 0.01 * (seed % 10)  # [T, 1]
    rewards = np.repeat(t, 4, axis=1)  # [T, K]
    rewards[:, 3] -= 0.2  # the worst task
    overrides = (f"balance.strategy={strategy}", "eval.every=5", *extra)
    return write_run(path, seed=seed, steps=STEPS, overrides=overrides, arrays={"reward": rewards})


def test_plan_matches_compute_and_reserves_keys():
    runs = plan(["uniform", "mgda"], 2, "default", ["steps=7"])
    assert [r.name for r in runs] == ["uniform-s0", "uniform-s1", "mgda-s0", "mgda-s1"]
    assert all("steps=7" in r.overrides for r in runs)
    with pytest.raises(ValueError, match="reserved"):
        plan(["uniform"], 1, "default", ["seed=3"])
    with pytest.raises(ValueError, match="reserved"):
        plan(["uniform"], 1, "default", ["balance.options.weights=[1, 1, 1, 1]"])
    (static,) = plan(["static"], 1, "default", [], {"static": ["balance.options.weights=[2]"]})
    assert "balance.options.weights=[2]" in static.overrides


def test_static_grid_by_hand():
    assert static_grid(3, factor=2.0) == [[1, 1, 1], [2, 1, 1], [1, 2, 1], [1, 1, 2]]


def weights_arg(weights) -> str:
    return "balance.options.weights=[" + ", ".join(f"{w:g}" for w in weights) + "]"


def test_tuned_static_is_the_best_of_the_sweep_and_is_compared(tmp_path):
    out, common = tmp_path / "out", [f"steps={STEPS}", "eval.every=5"]
    grid = static_grid(4)
    for i, weights in enumerate(grid):  # weighting 3 is planted best (+.1), weighting 1 second
        lift = {3: 0.1, 1: 0.05}.get(i, 0.0)
        planted(out / "tune" / "runs" / f"static{i}-s{TUNE_SEED}", "static", TUNE_SEED, lift,
                (weights_arg(weights),))  # fmt: skip
    for seed in (0, 1):
        planted(out / "runs" / f"uniform-s{seed}", "uniform", seed, 0.0)
        planted(out / "runs" / f"static-s{seed}", "static", seed, 0.02, (weights_arg(grid[3]),))
    compare(["uniform", "static"], seeds=2, out=out, overrides=common)
    sweep = (out / "tune_static.md").read_text()
    chosen = [line for line in sweep.splitlines() if line.endswith("| yes |")]
    assert chosen == [line for line in sweep.splitlines() if line.startswith("| [1, 1, 2, 1]")]
    table = (out / "compare.md").read_text()
    assert "`static` weights: [1, 1, 2, 1] (tuned, see tune_static.md)." in table
    assert "| mean vs uniform | worst vs uniform | mean vs static | worst vs static |" in table
    uniform_row = next(line for line in table.splitlines() if line.startswith("| uniform"))
    assert uniform_row.endswith("| - | - | -2.0 [-2.0, -2.0] | -2.0 [-2.0, -2.0] |")
    figures = sorted(p.name for p in (out / "figures").glob("*forest*"))
    assert figures == ["03-compare-forest-uniform.png", "04-compare-forest-static.png"]
    # the static runs found under runs/ are reused only because their weights are the chosen ones
    assert tune_static("default", out, common) == [1, 1, 2, 1]


def test_run_all_reuses_finished_runs_and_refuses_another_configuration(tmp_path):
    runs = tmp_path / "runs"
    ok = planted(runs / "uniform-s0", "uniform", 0, 0.0)
    planted(runs / "other-s0", "mgda", 0, 0.0)
    common = [f"steps={STEPS}", "eval.every=5", "balance.strategy=uniform"]
    good = Planned("uniform-s0", "default", [*common, "seed=0", "run_name=uniform-s0"])
    assert run_all([good], runs, jobs=2) == [ok]  # reused: nothing is trained
    bad = Planned("other-s0", "default", [*common, "seed=0", "run_name=other-s0"])
    with pytest.raises(ValueError, match="other-s0 holds a run of another configuration"):
        run_all([good, bad], runs, jobs=2)
    assert (runs / "other-s0" / "summary.json").exists()  # and nothing was overwritten


def test_a_run_failing_in_its_worker_process_is_named_with_its_log(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{not json\n')
    task = f"tasks=[{{name: mine, type: dataset, options: {{path: '{bad}', reward: exact}}}}]"
    planned = Planned("broken-s0", "default", [task, "seed=0", "run_name=broken-s0"])
    with pytest.raises(RunsFailed, match=r"1 run\(s\) failed: broken-s0 \(ValueError: .*rows"):
        run_all([planned], tmp_path / "runs", jobs=2)
    assert "rows.jsonl:2" in (tmp_path / "runs" / "broken-s0.log").read_text()


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
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(.975, 2) = 4.303 -> half-width 4.303 / sqrt(3) = 2.484
    assert (
        m == 2.0
        and hi - m == pytest.approx(2.484, abs=1e-3)
        and m - lo == pytest.approx(2.484, abs=1e-3)
    )


def test_ratio_interval_is_geometric_by_hand():
    m, lo, hi = ratio_interval([1.0, 10.0, 100.0])
    # logs 0, ln10, 2 ln10: mean ln10 -> 10; half-width 4.303 * ln10 / sqrt(3) -> x/ 304.9
    assert m == pytest.approx(10.0)
    assert hi / m == pytest.approx(m / lo) and hi / m == pytest.approx(304.9, rel=1e-3)
    assert ratio_interval([4.0, -1.0, math.nan])[0] == pytest.approx(4.0)  # only positive ratios


def test_compare_reuses_runs_and_recovers_the_planted_lift(tmp_path):
    runs = tmp_path / "out" / "runs"
    for seed in (0, 1):
        planted(runs / f"uniform-s{seed}", "uniform", seed, 0.0)
        planted(runs / f"equal_norm-s{seed}", "equal_norm", seed, 0.1)
    out = compare(
        ["uniform", "equal_norm"],
        seeds=2,
        out=tmp_path / "out",
        overrides=[f"steps={STEPS}", "eval.every=5"],
    )
    table = (out / "compare.md").read_text()
    static_row = next(line for line in table.splitlines() if line.startswith("| equal_norm"))
    # +0.1 reward -> +10 accuracy points on every seed: paired difference 10.0, zero width
    assert "| 10.0 [10.0, 10.0] | 10.0 [10.0, 10.0] |" in static_row
    assert (out / "report.html").exists()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == [
        "01-compare-curves.png", "02-compare-tasks.png", "03-compare-forest-uniform.png",
        "04-compare-effort.png", "05-compare-imbalance.png",
    ]  # fmt: skip
    by = {n: [load_run(runs / f"{n}-s{s}") for s in (0, 1)] for n in ("uniform", "equal_norm")}
    for reduce in ("mean", "min"):
        assert paired_differences(by, "uniform", reduce)["equal_norm"] == pytest.approx([0.1, 0.1])


def test_cli_compare_unknown_strategy_is_one_line(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "taskgrad.cli", "compare", "--strategies", "uniform,nope"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: unknown balancing strategy 'nope'; valid: ")
    assert len(out.stderr.strip().splitlines()) == 1


def test_score_tokens_and_minutes_by_hand(tmp_path):
    import pandas as pd

    from taskgrad.analysis.runs import Run
    from taskgrad.config import load_config, to_dict

    cfg = to_dict(load_config("default", ["rollout.group_size=4"]))
    tasks = [t["name"] for t in cfg["tasks"]]
    rows = {0: {f"eval/{t}/accuracy": 0.5 for t in tasks}}
    for step, length in ((1, 3.0), (2, 5.0)):
        rows[step] = {"time/step": 30.0}
        for k, t in enumerate(tasks):
            rows[step] |= {f"task/{t}/prompts": 2.0 + k, f"task/{t}/response_length": length}
    rows[2] |= {f"eval/{t}/accuracy": 0.25 * (k + 1) for k, t in enumerate(tasks)}
    s = score_run(Run(tmp_path, cfg, pd.DataFrame.from_dict(rows, orient="index")), 0.25)
    # prompts 2+3+4+5 = 14 per step, G = 4: 14 * 4 * 3 = 168 and 14 * 4 * 5 = 280 -> mean 224
    assert s.tokens_per_step == pytest.approx(224.0)
    assert s.minutes == pytest.approx(1.0)  # 2 x 30 s
    assert s.final_mean == pytest.approx(0.625) and s.final_worst == pytest.approx(0.25)
    assert s.steps_to_target == 0  # the worst task starts at .5 >= .25
    assert s.auc == pytest.approx((0.5 + 0.625) / 2)  # two evaluations: a trapezoid over 2 steps
