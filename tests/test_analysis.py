"""The analysis recovers structure planted in synthetic run directories (synthetic_runs.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("statsmodels")

from taskgrad.analysis import claims, explain, gains, measures
from taskgrad.analysis.analyse import analyse
from taskgrad.analysis.reproduce import plan
from taskgrad.analysis.runs import group_runs, load_run
from taskgrad.analysis.stats import seed_band, spearman
from taskgrad.config import load_config, to_dict
from tests.synthetic_runs import write_run

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


def test_seeds_aggregate_to_mean_and_band(tmp_path):
    # Two seeds whose imbalance at step 1 is 2 and 4: mean 3, sd sqrt(2),
    # t(0.975, 1) = 12.7062 -> half 12.7062 * sqrt(2) / sqrt(2) = 12.7062
    for seed in (0, 1):
        write_run(tmp_path / f"s{seed}", seed=seed, steps=4)
        lines = (tmp_path / f"s{seed}" / "metrics.jsonl").read_text().splitlines()
        lines[1] = lines[1].replace('"grad/full/imbalance": ', '"grad/full/imbalance": 0, "x": ')
        lines[1] = lines[1].replace(
            '"grad/full/imbalance": 0', f'"grad/full/imbalance": {2 + 2 * seed}'
        )
        (tmp_path / f"s{seed}" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    group = group_of(tmp_path / "s0", tmp_path / "s1")
    mean, lo, hi = seed_band(group.stack("grad/full/imbalance"))
    assert mean[1] == pytest.approx(3)
    assert (lo[1], hi[1]) == pytest.approx((3 - 12.7062, 3 + 12.7062), abs=1e-3)


# --- planted structure -------------------------------------------------------------------------


def planted_u(steps: int, factors: list[float], noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(1, steps + 1)[:, None] / steps
    return (
        1e-3 * np.exp(-2 * t) * np.array(factors) * np.exp(noise * rng.standard_normal((steps, 4)))
    )


def test_planted_20x_imbalance_is_recovered(tmp_path):
    u = planted_u(40, [1, 2, 5, 20], noise=0.01)
    group = group_of(write_run(tmp_path / "r", steps=40, arrays={"u": u}))
    im = measures.imbalance(group)
    assert im.median == pytest.approx(20, rel=0.05)
    assert im.mean_ratio == pytest.approx(20, rel=0.05)
    assert (im.largest, im.smallest) == ("table_qa", "code")


def inverse_gain_runs(tmp_path, sign: float, seeds: int = 2):
    """Gradient levels 1..4 per task; reward slopes ordered by ``sign`` (-1: inversely)."""
    paths = []
    for seed in range(seeds):
        steps = 48
        t = np.arange(1, steps + 1)[:, None] / steps
        slopes = np.array([0.1, 0.2, 0.3, 0.4])[:: -1 if sign < 0 else 1]
        rng = np.random.default_rng(seed)
        reward = 0.2 + slopes * t + 0.003 * rng.standard_normal((steps, 4))
        u = planted_u(steps, [1, 2, 3, 4], noise=0.01, seed=seed)
        paths.append(write_run(tmp_path / f"s{seed}", seed=seed, steps=steps,
                               overrides=("diagnostics.gain_window=5",),
                               arrays={"u": u, "reward": reward}))  # fmt: skip
    return group_of(*paths)


def test_planted_negative_rank_correlation_is_recovered(tmp_path):
    group = inverse_gain_runs(tmp_path, sign=-1)
    windows = gains.group_windows(group)
    assert len(windows) == 6 and {w.s for w in windows} == {5}
    result = gains.rank_gain_by_grad(windows, n_boot=N_BOOT)
    assert result.rho < -0.9 and result.hi < 0
    assert result.sentence().startswith(
        "No: across tasks, gradient size ranks learning gain in reverse"
    )
    largest = gains.largest_gradient_gain_rank(windows)
    assert largest.match_share == 0 and largest.lowest_share == 1


def test_planted_positive_rank_correlation_says_yes(tmp_path):
    result = gains.rank_gain_by_grad(
        gains.group_windows(inverse_gain_runs(tmp_path, sign=1)), N_BOOT
    )
    assert result.rho > 0.9 and result.lo > 0
    assert result.sentence().startswith("Yes")


def test_recomputed_gain_equals_the_logged_one(tmp_path):
    run = load_run(write_run(tmp_path / "r", steps=40))
    for w in gains.windows_of(run):
        row = run.metrics.index[run.column("gain/window_center") == w.center][0]
        logged = [run.column(f"gain/{t}/window")[row] for t in run.tasks]
        assert w.gain == pytest.approx(logged, abs=1e-12)


def test_short_run_windows_shrink_to_fit(tmp_path):
    run = load_run(write_run(tmp_path / "r", steps=6))  # gain_window 10 > steps: none logged
    centers = [(w.center, w.s) for w in gains.windows_of(run)]
    assert centers == [(1, 1), (3, 3), (5, 1)]


def planted_advantage_run(tmp_path, steps: int = 200):
    """ln u = mu_k + beta d + e with |A| = a_k + d; a_k runs opposite to mu_k across tasks."""
    rng = np.random.default_rng(1)
    mu = np.log([1.0, 3.0, 10.0, 30.0]) - 7
    a = np.array([0.8, 0.6, 0.4, 0.2])
    beta, sd_d, sd_e = 8.0, 0.05, 0.3
    d = sd_d * rng.standard_normal((steps, 4))
    y = mu + beta * d + sd_e * rng.standard_normal((steps, 4))
    arrays = {"u": np.exp(y), "abs_advantage": a + d}
    var_mu, within = np.var(mu), (beta * sd_d) ** 2 + sd_e**2
    r = beta * sd_d / math.sqrt(within)
    expected = {
        "r2_task": var_mu / (var_mu + within),
        "r2_both": (var_mu + (beta * sd_d) ** 2) / (var_mu + within),
        "within_rho": 6 / math.pi * math.asin(r / 2),  # Spearman of a bivariate normal
    }
    return group_of(write_run(tmp_path / "r", steps=steps, arrays=arrays)), expected


def test_planted_task_effect_and_within_task_slope_are_recovered(tmp_path):
    group, expected = planted_advantage_run(tmp_path)
    regs = {r.name.split()[0]: r for r in explain.regressions(group)[0]}
    adv = regs["advantage"]
    assert adv.r2_task == pytest.approx(expected["r2_task"], abs=0.03)  # 0.867
    assert adv.r2_both == pytest.approx(expected["r2_both"], abs=0.03)  # 0.952
    assert adv.imbalance_explained < 0.5  # |A| does not reproduce the task means: it runs opposite
    coefs = adv.coefs.loc["abs_advantage"]
    assert coefs.coef_fe > 0 and coefs.lo_fe > 0  # within tasks, |A| raises ln u
    rel = explain.advantage_relation(group, n_boot=N_BOOT)
    assert rel.within == pytest.approx(expected["within_rho"], abs=0.08)  # 0.786
    assert rel.within_lo > 0
    assert rel.across == pytest.approx(-1)
    fit_slope = np.mean([slope for _, slope in rel.fits.values()])
    assert fit_slope == pytest.approx(8 / math.log(10), rel=0.2)  # log10 u per unit |A|


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
    assert result.nonpositive > 0  # the negative estimates were counted, not logged
    assert math.isfinite(result.imbalance.median)
    assert result.cosines is not None and np.isfinite(result.cosines["early"].to_numpy()).all()
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
    found = {c.key: c for c in claims.collect(items)}
    assert sorted(found) == ["a", "b", "c", "d", "e", "f"]  # one mixture, one variant
    assert found["a"].verdict == "holds"  # 20x >= 10
    assert "constant: median 20.1× vs 20.1×" in found["f"].ours  # the ratio survives
    assert found["f"].verdict == "holds"
    assert all(c.verdict in ("holds", "does not hold", "undetermined") for c in found.values())


def test_ablation_is_compared_with_its_uniform_twin(tmp_path):
    paths = [write_run(tmp_path / "u", steps=24), write_run(tmp_path / "g", steps=24,
             overrides=("balance.strategy=grad_proportional",))]  # fmt: skip
    items = [analyse(g, n_boot=50) for g in group_runs([load_run(p) for p in paths])]
    assert [a.label for a in items] == [
        "balance.strategy=uniform",
        "balance.strategy=grad_proportional",
    ]
    (g,) = [c for c in claims.collect(items) if c.key == "g"]
    assert g.mixture == "balance.strategy=uniform"
    assert g.verdict == "holds"  # the same synthetic accuracies: no gain


def test_plan_passes_overrides_and_reserves_names(monkeypatch):
    monkeypatch.setattr("taskgrad.analysis.reproduce.ablation_available", lambda: False)
    runs = plan(seeds=2, length_seeds=1, overrides=["steps=3"])
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
