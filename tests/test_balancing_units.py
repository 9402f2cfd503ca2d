"""Balancing strategies against small hand-computed cases (the arithmetic is in the comments).

Inputs are built from exact task gradients g_k with identical halves (g_kA = g_kB = g_k), so the
split-half estimate equals ||g_k||^2 and the methods see the noiseless vectors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from taskgrad.balancing import STRATEGIES, TaskGradStats
from taskgrad.balancing.base import combination_weights
from taskgrad.balancing.solvers import cagrad_direction

KINDS = ("attention", "mlp", "embeddings", "norms")


def exact(grads, shares=None, step: int = 1, **stats) -> TaskGradStats:
    """Inputs for task gradients ``grads`` [K, D] (D divisible by 4: a quarter per module kind)."""
    g = torch.as_tensor(grads, dtype=torch.float64)
    k = g.shape[0]
    s = torch.full((k, 2), 0.5 / k, dtype=torch.float64) if shares is None else shares
    rows = (s[..., None] * g[:, None]).reshape(2 * k, -1)  # [2K, D] G_kh = s_kh g_k
    q = rows.shape[1] // 4
    grams = {
        n: rows[:, i * q : (i + 1) * q] @ rows[:, i * q : (i + 1) * q].T
        for i, n in enumerate(KINDS)
    }
    stats = {n: torch.as_tensor(v, dtype=torch.float32) for n, v in stats.items()}
    gains = stats.pop("gains", None)
    return TaskGradStats(
        tasks=[f"t{i}" for i in range(k)], step=step, group_gram=rows @ rows.T, shares=s,
        module_grams={**grams, "full": rows @ rows.T}, stats=stats,
        gains=None if gains is None else gains.double(),
    )  # fmt: skip


def coefficients(weights: torch.Tensor, s: TaskGradStats) -> torch.Tensor:
    """a_k with sum 1 from task_weights: a = w s / sum(w s)."""
    a = weights * s.task_shares
    return a / a.sum()


def combined(weights: torch.Tensor, s: TaskGradStats, grads) -> torch.Tensor:
    return coefficients(weights, s) @ torch.as_tensor(grads, dtype=torch.float64)


def weights_of(name: str, s: TaskGradStats, **options) -> torch.Tensor:
    return STRATEGIES.get(name)(s.num_tasks, **options)(s).task_weights


# --- the normalisation convention ---------------------------------------------------------------


def test_combination_weights_convention():
    shares = torch.tensor([[0.1, 0.2], [0.3, 0.4]], dtype=torch.float64)  # s = [0.3, 0.7]
    # The plain mix a = s gives ones; a = [1, 1] (equal tasks) gives w = 0.5 / s.
    torch.testing.assert_close(combination_weights(shares.sum(1), shares), torch.ones(2).double())
    torch.testing.assert_close(
        combination_weights(torch.tensor([2.0, 2.0]), shares),
        torch.tensor([0.5 / 0.3, 0.5 / 0.7], dtype=torch.float64),
    )
    # An absent task (s = 0) gets weight 1; no positive direction gives the plain mix.
    absent = torch.tensor([[0.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    assert combination_weights(torch.tensor([3.0, 1.0]), absent).tolist() == [1.0, 1.0]
    assert combination_weights(torch.tensor([0.0, 0.0]), shares).tolist() == [1.0, 1.0]


# --- MGDA ---------------------------------------------------------------------------------------


def test_mgda_two_orthogonal_unit_gradients_is_the_midpoint():
    s = exact([[1, 0, 0, 0], [0, 1, 0, 0]])
    torch.testing.assert_close(
        coefficients(weights_of("mgda", s), s), torch.tensor([0.5, 0.5]).double()
    )


def test_mgda_unnormalised_min_norm_point():
    # min_alpha ||alpha [1,0] + (1-alpha) [0,2]||^2 = alpha^2 + 4 (1-alpha)^2;
    # derivative 2 alpha - 8 (1-alpha) = 0: alpha = 0.8, so a = [4, 1] / 5.
    s = exact([[1, 0, 0, 0], [0, 2, 0, 0]])
    a = coefficients(weights_of("mgda", s, normalize=False), s)
    torch.testing.assert_close(a, torch.tensor([0.8, 0.2]).double())


def test_mgda_normalised_takes_the_midpoint_of_unit_directions():
    # Unit directions [1,0], [0,1] -> alpha = [.5, .5]; a = alpha / ||g|| = [.5, .25] -> [2/3, 1/3].
    s = exact([[1, 0, 0, 0], [0, 2, 0, 0]])
    torch.testing.assert_close(
        coefficients(weights_of("mgda", s), s), torch.tensor([2 / 3, 1 / 3]).double()
    )


def test_mgda_min_norm_point_is_no_worse_for_any_task():
    # The min-norm point d of the hull satisfies <d, g_k> >= ||d||^2 for every k.
    g = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = exact(g)
    d = combined(weights_of("mgda", s, normalize=False), s, g)
    assert bool((g @ d >= d @ d - 1e-10).all())


# --- PCGrad -------------------------------------------------------------------------------------


def test_pcgrad_projects_conflicting_gradients_onto_each_others_normal_plane():
    # g1 = [1, 0], g2 = [-1, 1], <g1, g2> = -1 < 0.
    # g1' = g1 - (-1)/2 g2 = [0.5, 0.5];  g2' = g2 - (-1)/1 g1 = [0, 1].
    # Sum [0.5, 1.5] = 2 g1 + 1.5 g2 -> a = [4/7, 3/7].
    grads = [[1, 0, 0, 0], [-1, 1, 0, 0]]
    s = exact(grads)
    for order in ("random", "fixed"):
        w = weights_of("pcgrad", s, order=order)
        torch.testing.assert_close(coefficients(w, s), torch.tensor([4 / 7, 3 / 7]).double())
        d = combined(w, s, grads)
        torch.testing.assert_close(d / d[1], torch.tensor([1 / 3, 1, 0, 0]).double())


def test_pcgrad_without_conflict_is_the_equal_task_mean():
    s = exact([[1, 0, 0, 0], [1, 1, 0, 0]])
    torch.testing.assert_close(
        coefficients(weights_of("pcgrad", s), s), torch.tensor([0.5, 0.5]).double()
    )


def test_pcgrad_random_order_is_reproducible_and_seeded():
    g = torch.randn(4, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g[1] = -g[0] + 0.3 * g[1]  # ensure conflicts
    s = exact(g)
    runs = [STRATEGIES.get("pcgrad")(4, seed=seed) for seed in (0, 0, 1)]
    outs = [[r(s).task_weights for _ in range(5)] for r in runs]
    assert all(torch.equal(a, b) for a, b in zip(outs[0], outs[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(outs[0], outs[2], strict=True))
    assert not torch.equal(outs[0][0], outs[0][1])  # a fresh order at every call


def test_pcgrad_modular_resolves_conflicts_module_by_module():
    # Attention coordinates: [1,0] vs [0,1] (no conflict) -> equal mean [.5, .5].
    # MLP coordinates: [1,0] vs [-1,1] (conflict) -> [4/7, 3/7] as in the PCGrad case above.
    grads = [[1, 0, 1, 0, 0, 0, 0, 0], [0, 1, -1, 1, 0, 0, 0, 0]]
    s = exact(grads)
    out = STRATEGIES.get("pcgrad_modular")(2)(s)
    attn, mlp = out.module_weights["attention"], out.module_weights["mlp"]
    torch.testing.assert_close(coefficients(attn, s), torch.tensor([0.5, 0.5]).double())
    torch.testing.assert_close(coefficients(mlp, s), torch.tensor([4 / 7, 3 / 7]).double())
    # No gradient in embeddings / norms: no active task there, so the plain mix.
    assert out.module_weights["norms"].tolist() == [1.0, 1.0]


# --- IMTL-G, UPGrad, Nash-MTL, CAGrad -----------------------------------------------------------


def test_imtl_g_gives_equal_projections_onto_every_unit_task_gradient():
    g = torch.randn(3, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g[0] *= 10
    s = exact(g)
    d = combined(weights_of("imtl_g", s), s, g)
    projections = g @ d / g.norm(dim=1)  # [3]
    torch.testing.assert_close(projections, projections[0].expand(3), rtol=1e-9, atol=1e-12)


def test_upgrad_without_conflict_is_the_mean_of_unit_directions():
    # Pairwise non-negative inner products: every row lies in the dual cone, its own projection;
    # with normalised rows the update is the mean of u_k, a_k \propto 1 / ||g_k||.
    g = torch.tensor([[3.0, 0, 0, 0], [1.0, 1.0, 0, 0], [0, 0.5, 0, 0]], dtype=torch.float64)
    s = exact(g)
    a = coefficients(weights_of("upgrad", s, reg=0.0), s)
    expected = 1 / g.norm(dim=1)
    torch.testing.assert_close(a, expected / expected.sum())


def test_upgrad_never_conflicts_with_a_task():
    g = torch.randn(4, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g[1] = -g[0] + 0.2 * g[1]
    s = exact(g)
    for normalize in (True, False):
        d = combined(weights_of("upgrad", s, normalize=normalize, reg=0.0), s, g)
        assert bool((g @ d >= -1e-9).all())


def test_nash_mtl_solves_the_bargaining_condition():
    # Orthogonal g1 = [1,0], g2 = [0,2]: Q = diag(1, 4), Q a = 1/a gives a = [1, 1/2] -> [2/3, 1/3].
    s = exact([[1, 0, 0, 0], [0, 2, 0, 0]])
    torch.testing.assert_close(
        coefficients(weights_of("nash_mtl", s), s), torch.tensor([2 / 3, 1 / 3]).double()
    )
    # In general a \propto alpha with Q alpha = 1/alpha, so (Q a) * a is a constant vector.
    g = torch.randn(3, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    s = exact(g)
    a = coefficients(weights_of("nash_mtl", s), s)
    product = (g @ g.T @ a) * a
    torch.testing.assert_close(product, product[0].expand(3), rtol=1e-6, atol=0.0)


def test_cagrad_with_c_zero_is_the_mean_and_its_inner_problem_is_solved():
    s = exact([[1, 0, 0, 0], [-0.8, 0.6, 0, 0]])
    torch.testing.assert_close(
        coefficients(weights_of("cagrad", s, c=0.0), s), torch.tensor([0.5, 0.5]).double()
    )
    # The inner minimum over w in the simplex, checked on a grid: a = 1/2 + lambda w.
    q = np.array([[1.0, -0.8], [-0.8, 1.0]])
    c = 0.5
    g0 = np.sqrt(np.full(2, 0.5) @ q @ np.full(2, 0.5))

    def objective(w):
        return w @ q @ np.full(2, 0.5) + c * g0 * np.sqrt(w @ q @ w)

    a = cagrad_direction(q, c)
    lam = (a - 0.5).sum()  # a - 1/2 = lambda w, sum w = 1
    best = min(objective(np.array([t, 1 - t])) for t in np.linspace(0, 1, 2001))
    assert objective((a - 0.5) / lam) <= best + 1e-9


# --- norm balancing -----------------------------------------------------------------------------


def test_equal_norm_gives_every_task_the_same_contribution_norm():
    # ||g|| = [1, 2] -> a \propto [1, 1/2] = [2/3, 1/3]; a_k ||g_k|| equal.
    s = exact([[1, 0, 0, 0], [0, 2, 0, 0]])
    torch.testing.assert_close(
        coefficients(weights_of("equal_norm", s), s), torch.tensor([2 / 3, 1 / 3]).double()
    )


def test_equal_norm_uses_the_floored_unbiased_norm():
    # Task 1's halves are g +- e with ||e||^2 = 9 > ||g||^2 = 1: <g_A, g_B> = 1 - 9 < 0, and the
    # naive squared norm of the average is ||g||^2 = 1, so n_1^2 = floor * 1 = 0.25, n_1 = 0.5;
    # task 0 is exact with ||g0|| = 1. So a \propto [1, 2] = [1/3, 2/3].
    g0, g1, e = [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 3.0, 0]
    halves = torch.tensor(
        [
            [g0, g0],
            [
                [a + b for a, b in zip(g1, e, strict=True)],
                [a - b for a, b in zip(g1, e, strict=True)],
            ],
        ]
    ).double()
    shares = torch.full((2, 2), 0.25, dtype=torch.float64)
    rows = (shares[..., None] * halves).reshape(4, -1)
    s = TaskGradStats(tasks=["a", "b"], step=1, group_gram=rows @ rows.T, shares=shares)
    assert float(s.sqnorm_unbiased()[1]) == pytest.approx(-8.0)
    a = coefficients(weights_of("equal_norm", s, floor=0.25), s)
    torch.testing.assert_close(a, torch.tensor([1 / 3, 2 / 3]).double())


def test_norm_averages_skip_steps_without_gradient():
    # Step 2 has task 1 at exactly zero (all advantages zero): its average stays ||g1||^2 = 4.
    strategy = STRATEGIES.get("equal_norm")(2, ema=0.5)
    strategy(exact([[1, 0, 0, 0], [0, 2, 0, 0]], step=1))
    out = strategy(exact([[1, 0, 0, 0], [0, 0, 0, 0]], step=2))
    assert strategy.state["sqnorm_unbiased"].tolist() == [1.0, 4.0]
    assert float(out.task_weights[1]) == 0.0  # no gradient: no coefficient


def test_gradnorm_moves_weight_from_the_large_gradient_task():
    # Equal rewards: rates 1, target w* \propto 1/||g|| = [1, 1/2] scaled to sum 2 = [4/3, 2/3];
    # w = 0.9 * 1 + 0.1 * w* = [1.0333, 0.9667] -> a = w / 2.
    s = exact([[1, 0, 0, 0], [0, 2, 0, 0]], reward=[0.5, 0.5])
    a = coefficients(weights_of("gradnorm", s, relax=0.1), s)
    torch.testing.assert_close(a, torch.tensor([0.9 + 0.4 / 3, 0.9 + 0.2 / 3]).double() / 2)


# --- progress-driven: FAMO, MT-GRPO -------------------------------------------------------------


def test_famo_weights_log_losses_and_shifts_weight_from_the_improving_task():
    grads = [[1, 0, 0, 0], [0, 1, 0, 0]]
    famo = STRATEGIES.get("famo")(2, ema=0.0, eps=0.1)
    # Step 1: z uniform, L = 1 - r + 0.1 = [0.6, 0.9]: a \propto z / L = [1/0.6, 1/0.9] -> [.6, .4].
    out = famo(exact(grads, reward=[0.5, 0.2], step=1))
    torch.testing.assert_close(
        coefficients(out.task_weights, exact(grads)), torch.tensor([0.6, 0.4]).double()
    )
    # Step 2: task 0 improved (0.5 -> 0.7), task 1 did not: task 0's logit falls.
    out = famo(exact(grads, reward=[0.7, 0.2], step=2))
    assert out.task_info["z"][0] < 0.5 < out.task_info["z"][1]


def test_mt_grpo_ratio_preserving_sampler():
    # Equal rewards: no gradient on the logits, z uniform; zero-advantage shares [0.5, 0]:
    # p \propto z / (1 - zeta) = [2, 1] -> [2/3, 1/3], so informative prompts come out 1:1.
    grads = [[1, 0, 0, 0], [0, 1, 0, 0]]
    out = STRATEGIES.get("mt_grpo")(2, ema=0.0)(
        exact(grads, reward=[0.5, 0.5], zero_adv_share=[0.5, 0.0])
    )
    assert out.task_weights.tolist() == [1.0, 1.0]
    torch.testing.assert_close(out.sampling, torch.tensor([2 / 3, 1 / 3]).double())


def test_mt_grpo_raises_the_weight_of_the_worst_stagnating_task():
    grads = [[1, 0, 0, 0], [0, 1, 0, 0]]
    strategy = STRATEGIES.get("mt_grpo")(2, mode="weights")
    for step in range(1, 6):  # task 0 stuck at 0.2, task 1 at 0.8 and improving
        out = strategy(exact(grads, reward=[0.2, 0.8 + 0.02 * step], step=step))
    assert out.sampling is None
    assert out.task_info["z"][0] > 0.5 > out.task_info["z"][1]
    assert float(out.task_weights[0]) > float(out.task_weights[1])


# --- curriculum and the experimental gain-aware rule --------------------------------------------


def test_dump_samples_the_task_with_more_absolute_advantage():
    # Equal counts, so equal bonuses: p = softmax([0.8, 0.2] / 0.1) = [1, e^-6] / (1 + e^-6).
    s = exact([[1, 0, 0, 0], [0, 1, 0, 0]], abs_advantage=[0.8, 0.2])
    out = STRATEGIES.get("dump")(2)(s)
    expected = torch.tensor([1.0, math.exp(-6.0)], dtype=torch.float64)
    torch.testing.assert_close(out.sampling, expected / expected.sum(), rtol=1e-6, atol=1e-7)
    assert out.task_weights.tolist() == [1.0, 1.0]


def test_gain_aware_is_plain_grpo_until_gains_are_known():
    s = exact([[1, 0, 0, 0], [0, 2, 0, 0]], gains=[math.nan, math.nan])
    assert weights_of("gain_aware", s).tolist() == [1.0, 1.0]


def test_gain_aware_puts_effort_where_gain_is():
    # gains [0.1, 0] -> p = [1, 0] floored by 0.05: [0.95, 0.05]; a = p / ||g|| = [0.95, 0.025].
    s = exact([[1, 0, 0, 0], [0, 2, 0, 0]], gains=[0.1, 0.0])
    a = coefficients(weights_of("gain_aware", s, min_share=0.05), s)
    torch.testing.assert_close(a, torch.tensor([0.95, 0.025]).double() / 0.975)


def with_window(s: TaskGradStats, signal, total, se=None) -> TaskGradStats:
    """``s`` with a TaskWindow of the given window means of the split-half (signal) and sample
    (signal + noise) squared norms."""
    from taskgrad.balancing.base import TaskWindow

    def vec(v):
        return torch.as_tensor(v, dtype=torch.float64)

    zeros = vec([0.0] * s.num_tasks)
    se = {"sqnorm_unbiased": vec(se) if se is not None else zeros, "sqnorm_naive": zeros}
    s.window = TaskWindow(10, {"sqnorm_unbiased": vec(signal), "sqnorm_naive": vec(total)}, se)
    return s


def test_signal_share_puts_each_signal_on_a_unit_scale_shrunk_by_its_signal_fraction():
    # window means S = [4, 1, -0.5], S + N = [8, 4, 9]: f = [0.5, 0.25, <0];
    # a = sqrt(S) / (S + N) = [2/8, 1/4, 0] = [0.25, 0.25, 0] -> normalised [0.5, 0.5, 0].
    s = with_window(exact([[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0]]), [4, 1, -0.5], [8, 4, 9])
    torch.testing.assert_close(coefficients(weights_of("signal_share", s), s),
                               torch.tensor([0.5, 0.5, 0.0]).double())  # fmt: skip
    # a distractor (no signal, large sample norm) gets nothing; a 10x loss scale is undone:
    # task 1 is task 0 scaled by 10 (S and S + N times 100): a_1 = 20 / 800 = a_0 / 10.
    s = with_window(exact([[1, 0, 0, 0], [0, 10, 0, 0], [0, 0, 30, 0]]), [4, 400, 0.0],
                    [8, 800, 900])  # fmt: skip
    torch.testing.assert_close(coefficients(weights_of("signal_share", s), s),
                               torch.tensor([10 / 11, 1 / 11, 0.0]).double())  # fmt: skip


def test_signal_share_z_zeroes_tasks_whose_signal_is_not_detectable():
    # S = [4, 1] with standard errors [1, 1]: at z = 2 only task 0 clears 2 se.
    s = with_window(exact([[1, 0, 0, 0], [0, 2, 0, 0]]), [4, 1], [8, 4], se=[1, 1])
    assert coefficients(weights_of("signal_share", s, z=2.0), s).tolist() == [1.0, 0.0]
    assert weights_of("signal_share", s, z=0.0).tolist() == [1.0, 1.0]  # equal a, equal shares


def test_signal_share_is_the_plain_mix_when_no_task_has_signal():
    s = with_window(exact([[1, 0, 0, 0], [0, 2, 0, 0]]), [0, -1], [8, 4])
    assert weights_of("signal_share", s).tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("equal_norm", {"ema": 1.0}),
        ("signal_share", {"z": -1.0}),
        ("mgda", {"floor": 0.0}),
        ("pcgrad", {"order": "sorted"}),
        ("cagrad", {"c": -1.0}),
        ("upgrad", {"reg": -1.0}),
        ("famo", {"eps": 0.0}),
        ("mt_grpo", {"mode": "both"}),
        ("dump", {"temperature": 0.0}),
        ("gain_aware", {"min_share": 0.5}),
        ("gradnorm", {"relax": 0.0}),
    ],
)
def test_invalid_options_fail_with_a_value_error(name, options):
    with pytest.raises(ValueError, match=r"balance\.options"):
        STRATEGIES.get(name)(2, **options)


def test_equal_task_weighs_each_tasks_objective_once():
    # shares s = [0.3, 0.7]: a = [1/2, 1/2] -> w = a / s * S = [1.667, 0.714]; the update
    # sum_k w_k G_k = sum_k w_k s_k g_k = (g_0 + g_1) / 2
    shares = torch.tensor([[0.1, 0.2], [0.3, 0.4]], dtype=torch.float64)
    s = exact([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], shares=shares)
    w = weights_of("equal_task", s)
    assert w.tolist() == pytest.approx([0.5 / 0.3, 0.5 / 0.7])
    assert (w * shares.sum(1)).tolist() == pytest.approx([0.5, 0.5])


def test_objective_scale_by_hand():
    """kappa_k: (1 - 1/G) * mean advantage scale * lambda_k (batch.objective_scale)."""
    from taskgrad.batch import make_batch, objective_scale
    from tests.fakes import fake_rollout

    rollout = fake_rollout([1, 1], group_size=4, new_tokens=5)
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    # constant aggregation, no scaling: kappa = (1 - 1/4) / L_const = 0.75 / 5
    batch = make_batch(rollout, rewards, 2, loss_agg="constant", loss_constant=5,
                       scale_rewards=False)  # fmt: skip
    assert objective_scale(batch, 0) == pytest.approx(0.75 / 5)
    # token_mean, population std of [1, 0, 0, 0] = sqrt(3)/4: kappa = .75 / (std + 1e-4) / len
    batch = make_batch(rollout, rewards, 2, loss_agg="token_mean", loss_constant=5,
                       scale_rewards=True)  # fmt: skip
    lengths = rollout.response_mask[:4].sum(1)
    expected = 0.75 / (3**0.5 / 4 + 1e-4) / float(lengths.mean())
    assert objective_scale(batch, 0) == pytest.approx(expected, rel=1e-6)
