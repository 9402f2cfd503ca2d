"""The comparison statistics on planted data: Dunnett's critical values against published and
independent values, the family-wise error at a planted null, power at the printed MDE, and the
paired bootstrap over prompts and seeds against a planted per-prompt effect."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from scipy.special import expit

from taskgrad.analysis.comparison import (
    contrast_family,
    dunnett_critical,
    fit_blocks,
    holm,
    paired_bootstrap,
    variance_split,
    verdict,
    worst_task_table,
)

# Dunnett (1964), two-sided 95% critical values for m treatments against one control, as tabled
# in textbooks (e.g. Montgomery, Design and Analysis of Experiments, table VIII).
DUNNETT_TABLE = {
    5: [2.57, 3.03, 3.29, 3.48, 3.62, 3.73, 3.82, 3.90, 3.97],
    10: [2.23, 2.57, 2.76, 2.89, 2.99, 3.07, 3.14, 3.19, 3.24],
    20: [2.09, 2.38, 2.54, 2.65, 2.73, 2.80, 2.86, 2.90, 2.95],
    10**6: [1.96, 2.21, 2.35, 2.44, 2.51, 2.57, 2.61, 2.65, 2.69],  # df = infinity
}
NAMES = ["uniform", "static", *(f"m{i}" for i in range(6))]  # 8 strategies
ONE_CONTROL = [(s, "uniform") for s in NAMES[1:]]
TWO_CONTROLS = ONE_CONTROL + [(s, "static") for s in NAMES[2:]]  # 13 contrasts, dependent


def equicorrelated(m: int, rho: float = 0.5) -> np.ndarray:
    r = np.full((m, m), rho)
    np.fill_diagonal(r, 1.0)
    return r


@pytest.mark.parametrize("df", sorted(DUNNETT_TABLE))
def test_dunnett_critical_values_match_the_published_table(df):
    ms = (1, 2, 4, 9)
    got = [dunnett_critical(equicorrelated(m), df) for m in ms]
    want = [DUNNETT_TABLE[df][m - 1] for m in ms]
    assert got == pytest.approx(want, abs=0.006)  # the table is rounded to 0.01


def test_dunnett_critical_value_matches_scipy_dunnett_on_a_balanced_design():
    # independent groups of 6, control + 4: scipy's allowance = c * s * sqrt(2 / 6), df = 25
    rng = np.random.default_rng(3)
    groups = [rng.normal(size=6) for _ in range(5)]
    res = sps.dunnett(*groups[1:], control=groups[0], rng=np.random.default_rng(0))
    ci = res.confidence_interval(0.95)
    s = math.sqrt(np.mean([g.var(ddof=1) for g in groups]))
    allowance = float((ci.high - ci.low)[0]) / 2
    assert dunnett_critical(equicorrelated(4), 25) == pytest.approx(
        allowance / (s * math.sqrt(2 / 6)), abs=0.01
    )


def null_table(rng, seeds: int = 6, effects: dict[str, float] | None = None) -> pd.DataFrame:
    """Seeds x strategies: big seed (block) effects, unit residual noise, planted effects."""
    block = 3.0 * rng.standard_normal((seeds, 1))
    y = block + rng.standard_normal((seeds, len(NAMES)))
    table = pd.DataFrame(y, columns=NAMES)
    for name, value in (effects or {}).items():
        table[name] += value
    return table


def test_dependent_family_critical_value_against_a_simulation_of_max_t():
    """Two controls make the contrasts' correlation singular (integrated with a ridge): the
    critical value must still leave 5% outside, by simulating max |T| with the singular R."""
    table = null_table(np.random.default_rng(0))
    fam = contrast_family(table, TWO_CONTROLS, adjusted_p=False)
    fit = fit_blocks(table)
    vectors = np.array([fit.vector(a, b) for a, b in TWO_CONTROLS])
    sd = np.sqrt(np.diag(vectors @ fit.cov_unscaled @ vectors.T))
    rng, draws = np.random.default_rng(1), 1_000_000
    chol = np.linalg.cholesky(fit.cov_unscaled[1:, 1:])
    z = np.concatenate([np.zeros((draws, 1)), rng.standard_normal((draws, 7)) @ chol.T], axis=1)
    t = (z @ vectors.T) / sd / np.sqrt(rng.chisquare(fit.df, draws) / fit.df)[:, None]
    inside = float((np.abs(t).max(axis=1) <= fam.critical).mean())  # MC SE 0.0002
    assert inside == pytest.approx(0.95, abs=0.001)
    assert fam.critical > dunnett_critical(equicorrelated(7), fit.df)  # more contrasts, wider


def test_complete_blocks_by_hand():
    rng = np.random.default_rng(5)
    table = null_table(rng, seeds=4, effects={"m0": 1.0})
    fam = contrast_family(table, ONE_CONTROL)
    resid = (
        table - table.mean(axis=1).to_numpy()[:, None] - table.mean(axis=0) + table.stack().mean()
    )
    s2 = float((resid**2).to_numpy().sum()) / ((8 - 1) * (4 - 1))
    c = fam.get("m0", "uniform")
    assert fam.df == 21 and fam.residual_sd == pytest.approx(math.sqrt(s2))
    assert c.estimate == pytest.approx(table["m0"].mean() - table["uniform"].mean())
    assert c.se == pytest.approx(math.sqrt(s2 * 2 / 4))
    assert c.high - c.estimate == pytest.approx(fam.critical * c.se)
    assert c.mde == pytest.approx((fam.critical + sps.t.ppf(0.8, 21)) * c.se)
    assert c.paired_sd == pytest.approx((table["m0"] - table["uniform"]).std(ddof=1))
    assert c.p_raw == pytest.approx(2 * sps.t.sf(abs(c.estimate / c.se), 21))


def test_a_missing_run_is_fitted_as_statsmodels_fits_it():
    import statsmodels.formula.api as smf

    table = null_table(np.random.default_rng(7), effects={"m1": 0.7})
    table.loc[2, "m1"] = np.nan  # one run failed
    fam = contrast_family(table, ONE_CONTROL)
    long = table.stack().rename("y").reset_index()
    long.columns = ["seed", "strategy", "y"]
    ols = smf.ols("y ~ C(strategy, Treatment('uniform')) + C(seed)", long).fit()
    term = "C(strategy, Treatment('uniform'))[T.m1]"
    c = fam.get("m1", "uniform")
    assert fam.df == int(ols.df_resid) == 6 * 8 - 1 - 7 - 5 - 1
    assert c.estimate == pytest.approx(ols.params[term])
    assert c.se == pytest.approx(ols.bse[term])
    assert c.paired_sd == pytest.approx((table["m1"] - table["uniform"]).dropna().std(ddof=1))


def test_family_wise_error_at_a_planted_null():
    """8 strategies x 6 seeds, nothing planted, 500 replicates, 13 contrasts (two controls):
    Dunnett and Holm keep the FWER at 5% (+ MC error), unadjusted tests do not."""
    rng, reps = np.random.default_rng(11), 500
    hits = {"dunnett": 0, "holm": 0, "raw": 0}
    for _ in range(reps):
        fam = contrast_family(null_table(rng), TWO_CONTROLS, adjusted_p=False)
        hits["dunnett"] += any(c.verdict != verdict(-1, 1) for c in fam.contrasts)
        hits["holm"] += any(c.p_holm < 0.05 for c in fam.contrasts)
        hits["raw"] += any(c.p_raw < 0.05 for c in fam.contrasts)
    rate = {k: v / reps for k, v in hits.items()}
    mc = 2.33 * math.sqrt(0.05 * 0.95 / reps)  # one-sided 99%: 0.023
    print(f"FWER at the null: {rate}")
    assert 0.05 - mc <= rate["dunnett"] <= 0.05 + mc  # exact, not just conservative
    assert rate["holm"] <= 0.05 + mc
    assert rate["raw"] >= 0.2


@pytest.mark.parametrize("times, low, high", [(1.0, 0.72, 0.88), (1.5, 0.95, 1.0)])
def test_power_at_the_printed_mde(times, low, high):
    """A planted difference of 1x (1.5x) the MDE is declared better ~80% (>= 95%) of the time;
    the MDE printed on the data estimates the one computed with the true SD."""
    probe = contrast_family(null_table(np.random.default_rng(0)), TWO_CONTROLS, adjusted_p=False)
    true_mde = (probe.critical + sps.t.ppf(0.8, probe.df)) * math.sqrt(2 / 6)  # sigma = 1
    rng, reps, hits, printed = np.random.default_rng(13), 500, 0, []
    for _ in range(reps):
        table = null_table(rng, effects={"m0": times * true_mde})
        c = contrast_family(table, TWO_CONTROLS, adjusted_p=False).get("m0", "uniform")
        hits += c.verdict == "better"
        printed.append(c.mde)
    print(f"power at {times} x MDE: {hits / reps:.3f}")
    assert low <= hits / reps <= high
    assert np.mean(printed) == pytest.approx(true_mde, rel=0.05)


def test_adjusted_p_values_agree_with_the_simultaneous_intervals():
    rng = np.random.default_rng(17)
    for _ in range(2):
        table = null_table(rng, effects={"m0": 1.2, "m3": -1.0})
        fam = contrast_family(table, TWO_CONTROLS)
        for c in fam.contrasts:
            if abs(c.p_adjusted - 0.05) > 0.002:  # the integration's resolution
                assert (c.p_adjusted < 0.05) == (c.verdict != "undetermined (within MDE)")
            assert c.p_raw <= c.p_adjusted <= 1 and c.p_raw <= c.p_holm


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5, 0.02, 0.2])
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])
    with_nan = holm(np.array([0.01, math.nan, 0.04]))
    assert math.isnan(with_nan[1]) and with_nan[[0, 2]] == pytest.approx([0.02, 0.04])


def test_verdicts_by_hand():
    assert verdict(0.1, 2.0) == "better"
    assert verdict(-2.0, -0.1) == "worse"
    assert verdict(-0.1, 2.0) == "undetermined (within MDE)"
    assert verdict(math.nan, math.nan) == "undetermined (within MDE)"


def test_one_seed_gives_no_intervals():
    fam = contrast_family(
        pd.DataFrame([[0.5, 0.6]], columns=["uniform", "m0"]), [("m0", "uniform")]
    )
    c = fam.contrasts[0]
    assert fam.df == 0 and math.isnan(c.low) and c.verdict.startswith("undetermined")
    assert "no residual degrees of freedom" in fam.describe()


def test_worst_task_is_the_minimum_of_the_seed_means():
    a = pd.DataFrame({"x": [0.2, 0.9], "y": [0.5, 0.5]}, index=[0, 1])  # per-seed min: .2, .5
    table, chosen = worst_task_table({"a": a})
    assert chosen == {"a": "y"} and table["a"].mean() == 0.5  # min of means; mean of mins .35


# --- the bootstrap -------------------------------------------------------------------------


def test_bootstrap_margins_and_split_by_hand():
    """d_ij = a_i + b_j, no interaction: the split has no outcome part, and each margin's
    bootstrap SD is its margin's population SD / sqrt(size)."""
    rng = np.random.default_rng(2)
    a_i, b_j = rng.normal(0, 0.1, 5), rng.normal(0, 0.2, 40)
    d = a_i[:, None] + b_j[None, :]
    split = variance_split({"t": d})
    assert split.outcome == pytest.approx(0, abs=1e-12)
    assert split.seed == pytest.approx(a_i.var(ddof=1) / 5)
    assert split.prompt == pytest.approx(b_j.var(ddof=1) / 40)
    zeros = np.zeros_like(d)
    bs = paired_bootstrap({"t": d}, {"t": zeros}, replicates=20000)
    assert bs.estimate == pytest.approx(d.mean())
    assert bs.sd_seeds == pytest.approx(a_i.std() / math.sqrt(5), rel=0.03)
    assert bs.sd_prompts == pytest.approx(b_j.std() / math.sqrt(40), rel=0.03)
    assert bs.paired_sd == pytest.approx(a_i.std(ddof=1))


def planted_outcomes(rng, seeds: int, spread: float, seed_sd: float, tasks: int = 2, n: int = 120):
    """Per task n prompts from a population: logit difficulty N(0, spread^2), strategy a's
    per-prompt effect N(0.4, 0.6^2) on the logit, a per-run shift N(0, seed_sd^2) (one model:
    the same on every task); greedy outcomes are Bernoulli per seed and prompt."""
    a, b = {}, {}
    shift_a, shift_b = rng.normal(0, seed_sd, (2, seeds, 1))
    for k in range(tasks):
        z, lift = rng.normal(0, spread, n), rng.normal(0.4, 0.6, n)
        a[f"t{k}"] = (rng.random((seeds, n)) < expit(z + lift + shift_a)).astype(np.uint8)
        b[f"t{k}"] = (rng.random((seeds, n)) < expit(z + shift_b)).astype(np.uint8)
    return a, b


def population_difference(spread: float, seed_sd: float) -> float:
    rng, draws = np.random.default_rng(99), 2_000_000
    z, lift = rng.normal(0, spread, draws), rng.normal(0.4, 0.6, draws)
    shift = rng.normal(0, seed_sd, (2, draws))
    return float(np.mean(expit(z + lift + shift[0]) - expit(z + shift[1])))


@pytest.mark.parametrize(
    "seeds, seed_sd, boot_low, boot_high",
    [(6, 0.1, 0.97, 1.0), (6, 0.25, 0.92, 0.98), (3, 0.6, 0.75, 0.92)],
)  # per-prompt outcome flips dominate / both matter / systematic seed shifts dominate
def test_bootstrap_recovers_a_planted_per_prompt_effect(seeds, seed_sd, boot_low, boot_high):
    """Prompts and seeds drawn afresh 300 times; the truth is the population difference.
    The crossed bootstrap over-covers where per-prompt outcome flips dominate (it counts them in
    both margins) and under-covers where seed shifts dominate with 3 seeds; the variance split's
    t-interval stays near nominal in all three."""
    truth, rng, reps = population_difference(1.5, seed_sd), np.random.default_rng(5), 300
    estimates, boot_hits, split_hits = [], 0, 0
    for r in range(reps):
        bs = paired_bootstrap(*planted_outcomes(rng, seeds, 1.5, seed_sd), replicates=500, seed=r)
        estimates.append(bs.estimate)
        boot_hits += bs.low <= truth <= bs.high
        lo, hi = bs.split.interval(bs.estimate)
        split_hits += lo <= truth <= hi
    print(f"seeds {seeds}, seed SD {seed_sd}: bootstrap {boot_hits / reps:.3f}, "
          f"split t {split_hits / reps:.3f}, bias {np.mean(estimates) - truth:+.4f}")  # fmt: skip
    se = np.std(estimates) / math.sqrt(reps)
    assert abs(np.mean(estimates) - truth) < 3 * se  # D is unbiased for the population's
    assert boot_low <= boot_hits / reps <= boot_high
    assert 0.92 <= split_hits / reps <= 0.985
