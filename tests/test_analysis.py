"""The analysis recovers structure planted in synthetic run directories (synthetic_runs.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("statsmodels")

from taskgrad.analysis import claims, explain, verdicts, windows
from taskgrad.analysis.analyse import analyse
from taskgrad.analysis.reproduce import plan
from taskgrad.analysis.runs import eval_metric, group_runs, load_run
from taskgrad.analysis.stats import seed_band, spearman
from taskgrad.config import load_config, to_dict
from tests.synthetic_runs import FOUR_TASKS, write_run

N_BOOT = 300  # enough for the intervals these tests check, and fast


def group_of(*paths):
    groups = group_runs([load_run(p) for p in paths])
    assert len(groups) == 1
    return groups[0]


# --- statistics by hand ------------------------------------------------------------------------


def test_seed_band_by_hand():
    # step 1: [1, 2, 3] -> mean 2, sd 1, t(0.975, 2) = 4.302653 -> half 4.302653 / sqrt(3) = 2.48414
    # step 2: [4, nan, nan] -> mean 4, no band (one value)
    frame = pd.DataFrame([[1.0, 2.0, 3.0], [4.0, np.nan, np.nan]], index=[1, 2])
    mean, lo, hi = seed_band(frame)
    assert mean.tolist() == [2.0, 4.0]
    assert lo[1] == pytest.approx(2 - 2.48414, abs=1e-4)
    assert hi[1] == pytest.approx(2 + 2.48414, abs=1e-4)
    assert math.isnan(lo[2]) and math.isnan(hi[2])


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    # ties: ranks x [1.5, 1.5, 3], y [1, 2, 3]; centred [-.5, -.5, 1] . [-1, 0, 1] = 1.5,
    # norms sqrt(1.5) sqrt(2) -> 1.5 / 1.7321 = 0.8660
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660, abs=1e-4)
    assert spearman([1, np.nan, 2, 3], [1, 5, 2, 3]) == pytest.approx(1)  # NaN pair dropped
    assert math.isnan(spearman([1, 2], [1, 2]))  # fewer than 3 pairs


# --- planted structure -------------------------------------------------------------------------


def planted_u(steps: int, factors: list[float], noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(1, steps + 1)[:, None] / steps
    return (
        1e-3 * np.exp(-2 * t) * np.array(factors) * np.exp(noise * rng.standard_normal((steps, 4)))
    )


def test_window_estimators_by_hand(tmp_path):
    # 20 steps, windows of 10. code: u = 1 every step; countdown: 3, -1 alternating (mean 1,
    # half the steps negative); arithmetic: 2 then 6 (window means 2 and 6); table_qa: 8.
    steps = 20
    u = np.zeros((steps, 4))
    u[:, 0] = 1.0
    u[:, 1] = np.where(np.arange(steps) % 2 == 0, 3.0, -1.0)
    u[:10, 2], u[10:, 2] = 2.0, 6.0
    u[:, 3] = 8.0
    run = load_run(write_run(tmp_path / "r", steps=steps, arrays={"u": u * 1e-3}))
    w = windows.run_windows(run, size=10)
    assert w.starts.tolist() == [1, 11] and w.ends.tolist() == [10, 20]
    np.testing.assert_allclose(w.u * 1e3, [[1, 1, 2, 8], [1, 1, 6, 8]])
    assert w.negatives[:, 1].tolist() == [5, 5]  # kept and counted, not dropped
    sig = windows.signal([w], n_boot=200)
    np.testing.assert_allclose(sig.u * 1e3, [1, 1, 4, 8])  # pooled: sums first
    im = windows.imbalance([w], sig, n_boot=200)
    assert im.ratio == pytest.approx(8.0)  # 8 / 1: a ratio of sums, not of per-step values
    assert (im.largest, im.smallest) in (("table_qa", "code"), ("table_qa", "countdown"))


def noisy_runs(tmp_path, truth, noise: float, seeds: int = 3, steps: int = 150):
    """Per-step u = 1e-3 (truth_k + noise * N(0, 1)): unbiased, the same noise for every task,
    so a small task's estimates are mostly noise (as in the runs: signal fractions differ)."""
    paths = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        u = 1e-3 * (np.array(truth) + noise * rng.standard_normal((steps, len(truth))))
        paths.append(write_run(tmp_path / f"s{seed}", seed=seed, steps=steps, arrays={"u": u}))
    return group_of(*paths)


def test_sums_first_removes_the_bias_of_per_step_ratios(tmp_path):
    """The issue's case: the per-step imbalance (max/min of the positive estimates) is biased by
    noise (here far down: negative small-task estimates drop out, and a noisy one is the minimum);
    the pooled window estimator recovers the planted 20x with an interval covering it."""
    group = noisy_runs(tmp_path, [1, 2, 5, 20], noise=4.0)
    ws = windows.group_windows(group)
    sig = windows.signal(ws, n_boot=300)
    im = windows.imbalance(ws, sig, n_boot=300)
    assert sig.detectable.all()
    assert im.lo <= 20 <= im.hi and im.ratio == pytest.approx(20, rel=0.35)
    per_step = pd.concat([r.column("grad/full/imbalance") for r in group.runs]).dropna()
    median = per_step.median()  # what the old per-step summary reported
    assert abs(math.log(median / 20)) > math.log(2) and not im.lo <= median <= im.hi


def test_a_task_without_signal_is_named_not_divided_by(tmp_path):
    group = noisy_runs(tmp_path, [0.0, 2, 5, 20], noise=0.0)  # code: exactly zero
    rng = np.random.default_rng(0)
    for run in group.runs:  # give code zero-mean noise: no signal, but non-zero estimates
        run.metrics["grad/full/code/sqnorm_unbiased"] = 1e-3 * rng.standard_normal(len(run.metrics))
    ws = windows.group_windows(group)
    sig = windows.signal(ws, n_boot=300)
    im = windows.imbalance(ws, sig, n_boot=300)
    assert sig.detectable.tolist() == [False, True, True, True]
    assert im.excluded == ["code"] and im.ratio == pytest.approx(10, rel=0.01)  # 20 / 2
    cos = windows.cosines(ws, sig, "all")
    assert cos.loc["code"].isna().all()  # undefined with the task that has no signal


def test_cosines_of_sums_recover_planted_cosines(tmp_path):
    path = write_run(tmp_path / "r", steps=60, overrides=(FOUR_TASKS,),
                     arrays={"cos": {(0, 3): 0.5, (1, 2): -0.3}})  # fmt: skip
    ws = windows.group_windows(group_of(path))
    sig = windows.signal(ws, n_boot=100)
    cos = windows.cosines(ws, sig, "all")
    assert cos.loc["code", "table_qa"] == pytest.approx(0.5, abs=0.05)
    assert cos.loc["countdown", "arithmetic"] == pytest.approx(-0.3, abs=0.05)


def inverse_gain_runs(tmp_path, sign: float, seeds: int = 3):
    """Gradient levels 1..4 per task; reward slopes ordered by ``sign`` (-1: inversely)."""
    paths = []
    for seed in range(seeds):
        steps = 80
        t = np.arange(1, steps + 1)[:, None] / steps
        slopes = np.array([0.1, 0.2, 0.3, 0.4])[:: -1 if sign < 0 else 1]
        rng = np.random.default_rng(seed)
        reward = 0.2 + slopes * t + 0.003 * rng.standard_normal((steps, 4))
        u = planted_u(steps, [1, 2, 3, 4], noise=0.01, seed=seed)
        paths.append(write_run(tmp_path / f"s{seed}", seed=seed, steps=steps,
                               arrays={"u": u, "reward": reward}))  # fmt: skip
    return group_of(*paths)


def test_gain_rules_on_planted_rankings(tmp_path):
    inverse = windows.group_windows(inverse_gain_runs(tmp_path / "inv", sign=-1))
    units = verdicts.gain_units(inverse)
    assert units.grad.shape == (3 * 4, 4)  # 8 windows per seed: 4 disjoint pairs, 3 seeds
    rank = verdicts.rule_rank(inverse)
    assert rank.statistic == pytest.approx(-1) and rank.outcome == verdicts.HOLDS
    lowest = verdicts.rule_largest_lowest(inverse)
    assert lowest.statistic == 1.0 and lowest.outcome == verdicts.HOLDS
    aligned = windows.group_windows(inverse_gain_runs(tmp_path / "al", sign=1))
    assert verdicts.rule_rank(aligned).outcome == verdicts.CONTRADICTED  # rho 1 > 0
    assert verdicts.rule_largest_lowest(aligned).outcome == verdicts.CONTRADICTED


def test_rho_interval_is_a_t_interval_clipped_to_correlations():
    # Hand-computed: mean 0.4, SD 0.2, t(0.975, 2) = 4.302653 -> half-width 0.496828.
    m, lo, hi = verdicts.rho_interval(np.array([0.2, 0.4, 0.6]))
    assert (m, lo, hi) == pytest.approx((0.4, 0.4 - 0.496828, 0.4 + 0.496828), abs=1e-6)
    # Mean 1/3, SD 0.7638: the unclipped interval, [-1.56, 2.23], leaves [-1, 1].
    assert verdicts.rho_interval(np.array([0.5, -0.5, 1.0]))[1:] == (-1.0, 1.0)
    one = verdicts.rho_interval(np.array([0.5]))
    assert one[0] == 0.5 and math.isnan(one[1]) and math.isnan(one[2])


def test_accuracy_captions_name_the_evaluation(tmp_path):
    greedy = load_run(write_run(tmp_path / "g", steps=4, overrides=("eval.samples=0",)))
    sampled = load_run(write_run(tmp_path / "s", steps=4, overrides=("eval.samples=4",)))
    assert eval_metric([greedy]) == "greedy" and eval_metric([sampled, sampled]) == "avg@4"
    assert eval_metric([greedy, sampled]) == "greedy or avg@4 (differs between runs)"


def test_undefined_verdict_numbers_are_named_not_printed_as_nan():
    nan = math.nan
    texts = [
        verdicts.decide_explained(nan, nan, nan, ("reward",)).text,
        verdicts.decide_explained(-167.3, nan, nan, ("reward",)).text,
        verdicts.decide_explained(0.2, -3.0, 0.6, ("reward",)).text,
        verdicts.ci_text(0.5, nan, nan),
    ]
    assert not any("nan" in t for t in texts), texts
    assert "undefined" in texts[0] and "< -1 (no interval" in texts[1]
    assert texts[2].endswith("0.20 [< -1, 0.60]") and texts[3] == "0.50 (no interval)"


def test_planted_explanation_is_recovered(tmp_path):
    """reward drives u within and across tasks (explained ~ 1) vs an unrelated statistic."""
    paths = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        steps = 150
        level = np.array([0.2, 0.4, 0.6, 0.8])
        reward = level + 0.1 * rng.standard_normal((steps, 4))
        u = 1e-3 * np.exp(4 * reward) * (1 + 0.5 * rng.standard_normal((steps, 4)))
        adv = 0.5 + 0.05 * rng.standard_normal((steps, 4))
        arrays = {"u": u, "reward": reward, "abs_advantage": adv}
        paths.append(write_run(tmp_path / f"s{seed}", seed=seed, steps=steps, arrays=arrays))
    ws = windows.group_windows(group_of(*paths))
    by = {e.name.split()[0]: e for e in explain.explanations(ws, n_boot=100)}
    assert by["reward"].explained > 0.8 and by["reward"].lo > 0.5
    assert verdicts.verdict_of(by["reward"]).outcome == verdicts.CONTRADICTED
    assert by["advantage"].explained < 0.5


def test_planted_score_term_is_recovered_by_the_decomposition(tmp_path):
    # token_mean: lambda = 1 / length. u = |A|^2 lambda^2 S with S = [1, 2, 4, 8].
    steps, adv, length, score = (
        30,
        np.array([0.5, 0.4, 0.3, 0.2]),
        np.array([4.0, 8, 12, 16]),
        np.array([1.0, 2, 4, 8]),
    )
    u = adv**2 / length**2 * score * 1e-2
    arrays = {"u": np.tile(u, (steps, 1)), "abs_advantage": np.tile(adv, (steps, 1)),
              "response_length": np.tile(length, (steps, 1))}  # fmt: skip
    group = group_of(write_run(tmp_path / "r", steps=steps, arrays=arrays))
    table = explain.decomposition(group)
    assert (table.score / table.score.min()).tolist() == pytest.approx([1, 2, 4, 8])
    assert table.normalisation.tolist() == pytest.approx(1 / length)
    shares = explain.log_variance_shares(table)
    assert sum(shares.values()) == pytest.approx(1)
    # the contribution w_k^2 u_k, w_k the logged batch share (synthetic: length / sum of lengths)
    w = length / length.sum()
    assert table.contribution.tolist() == pytest.approx((w**2 * u).tolist())


def test_null_and_negative_values_are_tolerated(tmp_path):
    group = group_of(write_run(tmp_path / "r", steps=30, null_every=5, transfer_at=(4,)))
    result = analyse(group, n_boot=50)
    assert np.isnan(group.runs[0].column("grad/full/imbalance")[5])
    assert result.signal.negatives.sum() > 0  # the negative estimates are kept and counted
    assert math.isfinite(result.imbalance.ratio)
    assert np.isfinite(result.cosines["early"].to_numpy()).any()
    assert list(result.transfer) == [4]


# --- grouping, claims, planning ----------------------------------------------------------------


def test_runs_group_by_config_and_are_labelled_by_what_differs(tmp_path):
    paths = [write_run(tmp_path / f"d{s}", seed=s, steps=4) for s in range(2)]
    paths += [write_run(tmp_path / "t", steps=4, overrides=("tasks=code,arithmetic,countdown",))]
    paths += [write_run(tmp_path / "c", steps=4, overrides=("grpo.loss_agg=constant",))]
    # the default list, but countdown with 3 numbers: same task names, another configuration
    tasks = to_dict(load_config()).get("tasks")
    (countdown,) = [t for t in tasks if t["name"] == "countdown"]
    countdown["options"] = {**countdown["options"], "num_numbers": 3}
    other = "tasks=" + json.dumps(tasks)  # JSON is YAML
    paths += [write_run(tmp_path / "o", steps=4, overrides=(other,))]
    groups = group_runs([load_run(p) for p in paths])
    assert [len(g.runs) for g in groups] == [2, 1, 1, 1]
    assert [g.label for g in groups] == [
        "preset=default",
        "tasks=code,arithmetic,countdown",
        "grpo.loss_agg=constant",
        "tasks.countdown.options.num_numbers=3",
    ]


def test_claims_follow_their_rules(tmp_path):
    u = planted_u(40, [1, 2, 5, 20], noise=0.01)
    paths = [write_run(tmp_path / f"d{s}", seed=s, steps=40, arrays={"u": u}) for s in range(2)]
    paths.append(write_run(tmp_path / "c", steps=40, arrays={"u": u / 50},
                           overrides=("grpo.loss_agg=constant",)))  # fmt: skip
    items = [analyse(g, n_boot=N_BOOT) for g in group_runs([load_run(p) for p in paths])]
    found = {c.key: c for c in claims.collect(items, sims=0)}
    assert sorted(found) == ["a", "b", "c", "d", "e", "f"]  # one mixture, one variant
    assert found["a"].verdict.outcome == "holds"  # 20x, a tight interval above 10
    assert "constant: imbalance 20.1× vs 20.1×: ratio 1.00" in found["f"].verdict.text
    # the synthetic response lengths rise with the tasks' rank, as u does: length "explains" it
    assert found["f"].verdict.outcome == "contradicted"
    outcomes = {"holds", "contradicted", "undetermined"}
    assert all(c.verdict.outcome in outcomes for c in found.values())


def test_ablation_is_paired_with_its_uniform_twin(tmp_path):
    paths = [write_run(tmp_path / f"u{s}", seed=s, steps=24) for s in range(3)]
    paths += [write_run(tmp_path / f"g{s}", seed=s, steps=24,
              overrides=("balance.strategy=grad_proportional",)) for s in range(3)]  # fmt: skip
    items = [analyse(g, n_boot=50) for g in group_runs([load_run(p) for p in paths])]
    assert [a.label for a in items] == [
        "balance.strategy=uniform",
        "balance.strategy=grad_proportional",
    ]
    (g,) = [c for c in claims.collect(items, sims=0) if c.key == "g"]
    assert g.mixture == "balance.strategy=uniform"
    assert g.verdict.outcome == "holds"  # the same synthetic accuracies: difference 0, CI tight
    paths = paths[:3] + paths[3:4]  # one ablation seed: no paired interval
    items = [analyse(g, n_boot=50) for g in group_runs([load_run(p) for p in paths])]
    (g,) = [c for c in claims.collect(items, sims=0) if c.key == "g"]
    assert g.verdict.outcome == "undetermined" and "at least 3" in g.verdict.text


def test_plan_passes_overrides_and_reserves_names(monkeypatch):
    monkeypatch.setattr("taskgrad.analysis.reproduce.ablation_available", lambda: False)
    runs = plan(seeds=2, length_seeds=1, ablation_seeds=0, overrides=["steps=3"])
    assert [r.name for r in runs] == ["default-s0", "default-s1", "math3-s0", "math3-s1",
                                      "default-seq_mean-s0", "default-constant-s0"]  # fmt: skip
    assert runs[4].overrides == [
        "steps=3",
        "grpo.loss_agg=seq_mean",
        "seed=0",
        "run_name=default-seq_mean-s0",
    ]
    monkeypatch.setattr("taskgrad.analysis.reproduce.ablation_available", lambda: True)
    assert plan(seeds=1, length_seeds=0)[-1].overrides[0] == "balance.strategy=grad_proportional"
    with pytest.raises(ValueError, match="reserved"):
        plan(overrides=["seed=3"])
