"""The comparison harness on synthetic run directories with planted accuracy differences (and
per-prompt outcomes in evals.jsonl)."""

from __future__ import annotations

import json
import math
import re
import zlib

import numpy as np
import pytest

from taskgrad.analysis.compare import (
    ENDPOINTS,
    TUNE_SEED,
    compare,
    plan,
    score_run,
    static_grid,
    strategy_imbalance,
    tune_static,
)
from taskgrad.analysis.reproduce import Planned, RunsFailed, run_all
from taskgrad.analysis.runs import load_run, read_evals
from taskgrad.config import load_config
from taskgrad.stats import mean_ci
from tests.synthetic_runs import write_run

STEPS = 20


PROMPTS = 100  # held-out prompts per task in the synthetic evals.jsonl
K = len(load_config("default").tasks)  # the default mix, which the planned runs use


def planted(path, strategy: str, seed: int, lift: float, extra: tuple[str, ...] = ()):
    """Rewards rise linearly from .3 to .6 for every task, plus ``lift`` for this strategy;
    final held-out accuracy .5 (.3 for the worst task) + lift + .01 x seed (in hundredths, so
    that evals.jsonl's 100 outcomes per task give it exactly)."""
    t = np.linspace(0.3, 0.6, STEPS)[:, None] + lift + 0.01 * (seed % 10)  # [T, 1]
    rewards = np.repeat(t, K, axis=1)  # [T, K]
    rewards[:, K - 1] -= 0.2  # the worst task
    overrides = (f"balance.strategy={strategy}", "eval.every=5", *extra)
    path = write_run(path, seed=seed, steps=STEPS, overrides=overrides, arrays={"reward": rewards})
    write_evals(path, seed)
    return path


def write_evals(path, seed: int) -> None:
    """evals.jsonl as the trainer writes it: per evaluated step and task, PROMPTS outcomes with
    round(accuracy x PROMPTS) correct, drawn with fixed per-prompt easiness (the same prompts on
    every seed and strategy: they pair) and per-run chance."""
    run = load_run(path)
    easy = np.random.default_rng(123).normal(size=(len(run.tasks), PROMPTS))  # per task, prompt
    rng = np.random.default_rng([seed, zlib.crc32(path.name.encode())])
    lines = []
    for step, row in run.heldout().iterrows():
        for k, task in enumerate(run.tasks):
            order = np.argsort(-(easy[k] + rng.normal(size=PROMPTS)))  # easiest first, noisily
            bits = np.zeros(PROMPTS, dtype=int)
            bits[order[: round(row[task] * PROMPTS)]] = 1
            lines.append(
                json.dumps({"step": int(step), "task": task, "correct": "".join(map(str, bits))})
            )
    (path / "evals.jsonl").write_text("\n".join(lines) + "\n")


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


def contrast_row(table: str, section: str, a: str, b: str) -> list[str] | None:
    """The cells of the row ``a | b`` in the compare.md section headed ``section``."""
    part = table.split(f"## {section}\n")[1].split("\n## ")[0]
    lines = [ln for ln in part.splitlines() if ln.startswith(f"| {a} | {b} |")]
    assert len(lines) <= 1
    return [c.strip() for c in lines[0].strip("|").split("|")] if lines else None


def weights_arg(weights) -> str:
    return "balance.options.weights=[" + ", ".join(f"{w:g}" for w in weights) + "]"


def test_tuned_static_is_the_best_of_the_sweep_and_is_compared(tmp_path):
    out, common = tmp_path / "out", [f"steps={STEPS}", "eval.every=5"]
    grid = static_grid(K)
    noise = {TUNE_SEED: 0.0, TUNE_SEED + 1: 0.01, TUNE_SEED + 2: -0.01}  # per weighting and seed
    for i, weights in enumerate(grid):  # weighting 3 is planted best (+.1), weighting 1 second
        for seed in range(TUNE_SEED, TUNE_SEED + 3):
            lift = {3: 0.1, 1: 0.05}.get(i, 0.0) + noise[seed] * (1 if i % 2 else -1)
            planted(out / "tune" / "runs" / f"static{i}-s{seed}", "static", seed, lift,
                    (weights_arg(weights), "eval.split=tune"))  # fmt: skip
    for seed in (0, 1):
        planted(out / "runs" / f"uniform-s{seed}", "uniform", seed, 0.0)
        planted(out / "runs" / f"static-s{seed}", "static", seed, 0.02, (weights_arg(grid[3]),))
    compare(["uniform", "static"], seeds=2, out=out, overrides=common)  # 3 tuning seeds
    sweep = (out / "tune_static.md").read_text()
    chosen = [line for line in sweep.splitlines() if line.endswith("| yes |")]
    assert chosen == [line for line in sweep.splitlines() if line.startswith("| [1, 1, 2]")]
    # score = (mean + worst) / 2 = .5 + lift - .1 - .05 on seed 1000: the chosen is +10 over
    # the uniform mix on every tuning seed up to the planted +-1 -> a clear, tight difference
    assert "Chosen: [1, 1, 2], 10.0 [" in sweep and "distinguishable from the uniform" in sweep
    assert "not distinguishable" not in sweep
    # the uniform mix: final mean (2 x .5 + .3) / 3 + .01 x (seed % 10) - noise
    # = .433, .433, .463 -> 44.3
    assert "| [1, 1, 1] | 44.3 [" in sweep
    table = (out / "compare.md").read_text()
    assert "`static` weights: [1, 1, 2] (tuned, see tune_static.md)." in table
    for endpoint in ENDPOINTS:  # static - uniform once (uniform is the baseline), +2 exactly
        assert contrast_row(table, f"Differences: {endpoint}", "uniform", "static") is None
        assert contrast_row(table, f"Differences: {endpoint}", "static", "uniform")[2:3] == [
            "2.0 [2.0, 2.0]"
        ]
    figures = sorted(p.name for p in (out / "figures").glob("*forest*"))
    assert figures == ["03-compare-forest-uniform.png"]  # static is nobody else's reference
    # the static runs found under runs/ are reused only because their weights are the chosen ones
    assert tune_static("default", out, common) == [1, 1, 2]


def test_tuning_that_cannot_tell_the_chosen_from_uniform_says_so():
    import pandas as pd

    from taskgrad.analysis.compare import tuning_summary

    rng = np.random.default_rng(0)
    finals = {  # 3 weightings x 3 seeds x 2 tasks, the second +.5 points on noise of 5 points
        f"w{i}": pd.DataFrame(0.5 + 0.005 * (i == 1) + 0.05 * rng.standard_normal((3, 2)),
                              columns=["a", "b"], index=[1000, 1001, 1002])
        for i in range(3)
    }  # fmt: skip
    lines, best = tuning_summary([[1, 1], [2, 1], [1, 2]], finals)
    text = "\n".join(lines)
    assert "not distinguishable from the uniform mix" in text or best == 0
    assert "Dunnett's critical value" in text and "on 4 df" in text  # (3 - 1) x (3 - 1)


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
    # last eval (step 20): reward .6 -> accuracy .5 for two tasks, .3 for the worst
    assert s.final_mean == pytest.approx((2 * 0.5 + 0.3) / 3)
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
    # +0.1 reward -> +10 accuracy points on every seed and task: zero residual, a zero-width
    # interval, better on both endpoints
    for endpoint in ENDPOINTS:
        cells = contrast_row(table, f"Differences: {endpoint}", "equal_norm", "uniform")
        assert cells[2] == "10.0 [10.0, 10.0]" and cells[-1] == "better"
    assert (out / "report.html").exists()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == [
        "01-compare-curves.png", "02-compare-tasks.png", "03-compare-forest-uniform.png",
        "04-compare-effort.png", "05-compare-imbalance.png",
    ]  # fmt: skip


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
    assert len(tasks) == 3  # the default mix
    # prompts 2+3+4 = 9 per step, G = 4: 9 * 4 * 3 = 108 and 9 * 4 * 5 = 180 -> mean 144
    assert s.tokens_per_step == pytest.approx(144.0)
    assert s.minutes == pytest.approx(1.0)  # 2 x 30 s
    assert s.final_mean == pytest.approx(0.5) and s.final_worst == pytest.approx(0.25)
    assert s.steps_to_target == 0  # the worst task starts at .5 >= .25
    assert s.auc == pytest.approx((0.5 + 0.5) / 2)  # two evaluations: a trapezoid over 2 steps


def test_evals_reader_keeps_the_last_of_repeated_lines(tmp_path):
    lines = [
        {"step": 0, "task": "a", "correct": "0101"},
        {"step": 5, "task": "a", "correct": "0000"},
        {"step": 5, "task": "a", "correct": "1110"},  # a resumed run evaluated step 5 again
    ]
    (tmp_path / "evals.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    evals = read_evals(tmp_path / "evals.jsonl")
    assert list(evals) == [0, 5] and evals[5]["a"].tolist() == [1, 1, 1, 0]
    assert read_evals(tmp_path / "nothing.jsonl") == {}


def test_evals_reader_turns_counts_of_k_samples_into_shares(tmp_path):
    """avg@k (eval.samples = k): each digit counts the prompt's correct completions out of k."""
    line = {"step": 3, "task": "a", "samples": 4, "correct": "0424"}
    (tmp_path / "evals.jsonl").write_text(json.dumps(line) + "\n")
    assert read_evals(tmp_path / "evals.jsonl")[3]["a"].tolist() == [0, 1, 0.5, 1]
    (tmp_path / "evals.jsonl").write_text(json.dumps({**line, "correct": "05"}) + "\n")
    with pytest.raises(ValueError, match=r"0\.\.4"):
        read_evals(tmp_path / "evals.jsonl")


def test_compare_end_to_end_with_families_and_prompt_bootstrap(tmp_path):
    """4 strategies x 4 seeds with per-run noise: the Gram methods (mgda, equal_norm) are also
    compared with equal_task; planted: mgda +15, equal_task +5, equal_norm 0 points."""
    runs, lifts = tmp_path / "out" / "runs", {"uniform": 0, "equal_task": 5, "mgda": 15,
                                              "equal_norm": 0}  # fmt: skip
    noise = np.random.default_rng(4).integers(-2, 3, size=(4, 4))  # hundredths, per run
    for j, (name, lift) in enumerate(lifts.items()):
        for seed in range(4):
            planted(runs / f"{name}-s{seed}", name, seed, (lift + noise[j, seed]) / 100)
    out = compare(list(lifts), seeds=4, out=tmp_path / "out",
                  overrides=[f"steps={STEPS}", "eval.every=5"])  # fmt: skip
    table = (out / "compare.md").read_text()

    def row(section: str, a: str, b: str) -> list[str]:
        found = contrast_row(table, section, a, b)
        assert found is not None, (section, a, b)
        return found

    mean = "Differences: final mean accuracy (primary)"
    assert "5 contrast(s) in the family; 4 strategies x 4 seeds" in table  # 3 vs uniform + 2
    assert row(mean, "mgda", "uniform")[-1] == "better"
    assert row(mean, "mgda", "equal_task")[-1] == "better"  # the method beyond its base mix
    assert row(mean, "equal_norm", "uniform")[-1] == "undetermined (within MDE)"
    assert row(mean, "equal_task", "uniform")[-1] == "better"  # the base-mix change itself
    noisy = row(mean, "equal_norm", "uniform")
    estimate, low, high = (float(x) for x in re.findall(r"-?\d+\.\d", noisy[2]))
    assert low < 0 < high and float(noisy[6]) > abs(estimate)  # the interval holds 0, < MDE
    assert float(noisy[3]) >= float(noisy[5])  # Dunnett p >= unadjusted p
    # the per-seed difference of mean accuracy equals the planted lifts' difference per seed
    planted_sd = np.std(noise[3] - noise[0], ddof=1)
    assert float(noisy[7]) == pytest.approx(planted_sd, abs=0.06)  # rounding to 0.1 points
    boot = row("Held-out prompts and seeds", "mgda", "equal_task")
    assert boot[2] == "4"
    assert float(boot[3]) == pytest.approx(10 + np.mean(noise[2] - noise[1]), abs=0.051)
    figures = sorted(p.name for p in (out / "figures").glob("*forest*"))
    assert figures == ["03-compare-forest-uniform.png", "04-compare-forest-equal_task.png"]
    assert "simultaneous 95%" in (out / "report.md").read_text()


def test_one_seed_compares_without_intervals(tmp_path):
    runs = tmp_path / "out" / "runs"
    planted(runs / "uniform-s0", "uniform", 0, 0.0)
    planted(runs / "equal_norm-s0", "equal_norm", 0, 0.03)
    out = compare(["uniform", "equal_norm"], seeds=1, out=tmp_path / "out",
                  overrides=[f"steps={STEPS}", "eval.every=5"])  # fmt: skip
    table = (out / "compare.md").read_text()
    cells = contrast_row(table, f"Differences: {ENDPOINTS[0]}", "equal_norm", "uniform")
    assert cells[2:] == ["3.0", "-", "-", "-", "-", "-", "undetermined (within MDE)"]
    assert "no residual degrees of freedom (one seed)" in table


def test_the_baseline_alone_is_reported_without_differences(tmp_path):
    """Stage 0 runs `compare --strategies uniform --gap` before any other arm exists: the table
    of the baseline is written and the contrast families are empty, not an error."""
    runs = tmp_path / "out" / "runs"
    for seed in (0, 1):
        planted(runs / f"uniform-s{seed}", "uniform", seed, 0.0)
    out = compare(["uniform"], seeds=2, out=tmp_path / "out",
                  overrides=[f"steps={STEPS}", "eval.every=5"])  # fmt: skip
    table = (out / "compare.md").read_text()
    assert "| uniform |" in table


def test_gap_sentence_by_hand():
    from taskgrad.analysis.compare import gap_text

    assert "no interference gap" in gap_text(0.0, -0.01)
    text = gap_text(0.03, 0.04)  # 3 and 4 points of room: +4.5 is 1.5x, +16 is 4.0x
    assert "gain 3.0 points more" in text and "1.5x that room and 4.0x that room" in text
    assert "beyond a room of 0" in gap_text(0.02, 0.0)


def test_the_table_pools_the_imbalance_over_seeds(tmp_path):
    """The strategies table's imbalance pools every step of every seed before the ratio: on
    planted unbiased squared norms (true 4:2:1, per-step noise SD 4e-3), its point estimate is
    the ratio of the pooled means computed here with numpy; no task is left out. The table used
    to show the geometric mean of per-run ratios over the runs where one was defined (2 of the
    testbed's 6 uniform runs), which reads another number."""
    rng = np.random.default_rng(0)
    true, runs, planted_u = np.array([4e-3, 2e-3, 1e-3]), [], []
    for seed in range(6):
        u = true + 4e-3 * rng.standard_normal((40, 3))
        planted_u.append(u)
        path = write_run(tmp_path / f"uniform-s{seed}", seed=seed, steps=40, arrays={"u": u})
        runs.append(load_run(path))
    pooled = np.concatenate(planted_u).mean(axis=0)
    text = strategy_imbalance(runs)["uniform"]
    assert text.split(" ")[0] == f"{pooled.max() / pooled.min():.1f}×", text
    assert "no detectable signal" not in text, text


def test_a_distractor_counts_in_no_endpoint(tmp_path):
    """A task with ``scored: false`` (the stage 1 distractor) is trained and evaluated but is in
    no accuracy endpoint: the final mean is over the scored tasks, and the prompt bootstrap reads
    their outcomes only (it stopped with a KeyError on the distractor's)."""
    tasks = ("tasks=[{name: code}, {name: countdown}, {name: table_qa}, "
             "{name: distractor, scored: false}]")  # fmt: skip
    overrides = [tasks, f"steps={STEPS}", "eval.every=5"]
    runs = tmp_path / "out" / "runs"
    weights = {"uniform": (), "static": ("balance.options.weights=[1, 1, 1, 0]",)}
    for name, lift in (("uniform", 0.0), ("static", 0.05)):
        for seed in range(3):
            rewards = np.repeat(np.linspace(0.3, 0.6, STEPS)[:, None], 4, axis=1)
            rewards[:, :3] += lift + 0.01 * seed
            rewards[:, 3] = 0.95  # the distractor's accuracy would lift the mean if it counted
            mine = (f"balance.strategy={name}", *weights[name], tasks, "eval.every=5")
            path = write_run(runs / f"{name}-s{seed}", seed=seed, steps=STEPS, overrides=mine,
                             arrays={"reward": rewards})  # fmt: skip
            run = load_run(path)
            lines = [
                json.dumps({"step": int(step), "task": task, "correct": "".join(
                    "1" if i < round(acc * PROMPTS) else "0" for i in range(PROMPTS))})
                for step, row in run.task_frame("eval/{task}/accuracy", steps="all").dropna()
                .iterrows() for task, acc in row.items()
            ]  # fmt: skip
            (path / "evals.jsonl").write_text("\n".join(lines) + "\n")
    out = compare(["uniform", "static"], seeds=3, out=tmp_path / "out", overrides=overrides,
                  static_weights=[1, 1, 1, 0])  # fmt: skip
    table = (out / "compare.md").read_text()
    uniform = next(ln for ln in table.splitlines() if ln.startswith("| uniform | 3 |"))
    # held-out accuracy = final reward - .1 (synthetic_runs): .5 + .01 x seed on the scored
    # tasks, 51.0 over seeds 0-2; (3 x 51.0 + 85) / 4 = 59.5 if the distractor counted
    assert uniform.split("|")[3].strip().startswith("51.0 "), uniform
    boot = contrast_row(table, "Held-out prompts and seeds", "static", "uniform")
    assert boot is not None and float(boot[3]) == pytest.approx(5.0, abs=0.051), table
