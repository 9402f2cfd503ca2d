"""Per-task gradients: the sum identity, the estimators' math and their statistics."""

from __future__ import annotations

import math

import pytest
import torch

from taskgrad.diagnostics import half_shares
from taskgrad.gradients import (
    GroupGradients,
    imbalance_ratio,
    proxy_names,
    scope_members,
    spearman,
    task_statistics,
)
from taskgrad.grpo import LOSS_AGGREGATIONS, group_advantages, policy_loss, token_weights
from taskgrad.train import backward_groups, forward_logprobs
from tests.fakes import fake_rollout, fake_trainer


def full_batch_gradient(trainer, rollout, advantages):
    """The ordinary gradient: one forward/backward over every row at once."""
    cfg = trainer.cfg
    model = trainer.model
    model.zero_grad(set_to_none=True)
    rows = torch.arange(rollout.input_ids.shape[0])
    logprobs, _ = forward_logprobs(model, rollout, rows, cfg.rollout.temperature)
    weights = token_weights(rollout.response_mask, cfg.grpo.loss_agg, cfg.rollout.max_new_tokens)
    loss, _ = policy_loss(
        logprobs, logprobs.detach(), advantages, weights.double(), cfg.grpo.clip_eps
    )
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("agg", LOSS_AGGREGATIONS.names())
@pytest.mark.parametrize("scope", ["full", "proxy"])
def test_group_gradients_sum_to_the_full_batch_gradient(small_model, agg, scope):
    prompts = [3, 2, 1]  # odd counts, and a task with one prompt (its half B is empty)
    rollout = fake_rollout(prompts)
    trainer = fake_trainer(small_model, 3, loss_agg=agg, micro_batch_size=3)
    rewards = torch.randint(
        0, 2, (rollout.input_ids.shape[0],), generator=torch.Generator().manual_seed(1)
    )
    advantages = group_advantages(rewards.double(), rollout.group_size).double()
    half = [0, 1, 0, 0, 1, 0]  # per prompt
    expected = full_batch_gradient(trainer, rollout, advantages)

    trainer.groups = GroupGradients(small_model, scope, num_groups=6)
    backward_groups(trainer, rollout, half, advantages, None, capture=True)
    trainer.groups.restore_sum()  # the plain sum: what the uniform strategy applies
    for name, p in small_model.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-12, rtol=1e-9), name
    # the buffered groups hold exactly the in-scope gradient, split by (task, half)
    in_scope = torch.cat([expected[n].reshape(-1) for n in trainer.groups.names])
    assert torch.allclose(trainer.groups.buffer.sum(0).double(), in_scope, atol=1e-6)
    assert trainer.groups.present.tolist() == [True, True, True, True, True, False]
    assert torch.all(trainer.groups.buffer[5] == 0)


def test_weighted_restore_is_the_weighted_loss_gradient(small_model):
    """Task weights applied to the group buffers equal the gradient of the task-weighted loss."""
    rollout = fake_rollout([2, 2])
    trainer = fake_trainer(small_model, 2)
    rewards = torch.tensor([1.0, 0, 0, 1] * 4, dtype=torch.float64)
    advantages = group_advantages(rewards, rollout.group_size)
    weights = torch.tensor([0.3, 2.0], dtype=torch.float64)
    # reference: scale each row's advantage by its task weight (the loss is linear in them)
    scaled = advantages * weights[rollout.task_index]
    expected = full_batch_gradient(trainer, rollout, scaled)
    trainer.groups = GroupGradients(small_model, "full", num_groups=4)
    backward_groups(trainer, rollout, [0, 1, 0, 1], advantages, None, capture=True)
    trainer.groups.restore_sum(weights.repeat_interleave(2))
    # Qwen2's RMSNorm computes in float32 even in a float64 model, and scaling before or after
    # the backward rounds differently there: agreement to float32 precision, not float64.
    for name, p in small_model.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-8, rtol=1e-5), name


def test_task_statistics_by_hand():
    # task 0: G_A = [.25, 0], G_B = [.25, .5], shares .25/.25 -> g_A = [1, 0], g_B = [1, 2]
    # task 1: G_A = G_B = [0, .25] -> g_A = g_B = [0, 1]
    groups = torch.tensor([[0.25, 0.0], [0.25, 0.5], [0.0, 0.25], [0.0, 0.25]], dtype=torch.float64)
    shares = torch.full((2, 2), 0.25, dtype=torch.float64)
    s = task_statistics(groups @ groups.T, shares)
    # unbiased: <g_A, g_B> = 1 and 1; naive: ||(G_A + G_B) / .5||^2 = ||[1, 1]||^2 = 2 and 1
    assert s["sqnorm_unbiased"].tolist() == pytest.approx([1.0, 1.0])
    assert s["sqnorm_naive"].tolist() == pytest.approx([2.0, 1.0])
    # noise = naive - unbiased = ||g_A - g_B||^2 / 4 = 4 / 4 = 1 with equal halves
    assert s["noise"].tolist() == pytest.approx([1.0, 0.0])
    # <g_0, g_1> = <[1, 1], [0, 1]> = 1; cos = 1 / sqrt(1 * 1)
    assert s["inner"][0, 1].item() == pytest.approx(1.0)
    assert s["cos"][0, 1].item() == pytest.approx(1.0)
    # g = sum of groups = [.5, 1], ||g||^2 = 1.25; <G_0, g> = .75 -> .6; <G_1, g> = .5 -> .4
    assert s["update_share"].tolist() == pytest.approx([0.6, 0.4])
    assert s["total_sqnorm"].item() == pytest.approx(1.25)


def test_negative_unbiased_estimate_is_kept_and_cosine_undefined():
    groups = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    s = task_statistics(groups @ groups.T, torch.full((2, 2), 0.25, dtype=torch.float64))
    assert s["sqnorm_unbiased"][0].item() == pytest.approx(-16.0)  # <4[1,0], 4[-1,.1]> = -16
    assert math.isnan(s["cos"][0, 1].item())
    assert math.isnan(imbalance_ratio(s["sqnorm_unbiased"]))  # one positive norm only


def test_cosines_symmetric_and_bounded_without_noise():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        task_grads = torch.randn(4, 7, generator=gen, dtype=torch.float64)
        groups = task_grads.repeat_interleave(2, 0) * 0.125  # identical halves: no noise
        s = task_statistics(groups @ groups.T, torch.full((4, 2), 0.125, dtype=torch.float64))
        cos = s["cos"]
        assert torch.allclose(cos, cos.T)
        assert torch.all(cos.abs() <= 1 + 1e-12)
        direct = torch.nn.functional.cosine_similarity(
            task_grads[:, None], task_grads[None], dim=-1
        )
        assert torch.allclose(cos, direct)
        assert torch.allclose(s["sqnorm_unbiased"], s["sqnorm_naive"])


def test_single_task_is_plain_grpo():
    groups = torch.randn(2, 5, dtype=torch.float64)
    s = task_statistics(groups @ groups.T, torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    assert s["update_share"].tolist() == pytest.approx([1.0])
    assert s["contribution_sqnorm"][0].item() == pytest.approx(groups.sum(0).norm().item() ** 2)


def test_absent_task_gives_nan_not_a_crash():
    groups = torch.randn(4, 3, dtype=torch.float64)
    groups[2:] = 0
    shares = torch.tensor([[0.5, 0.5], [0.0, 0.0]], dtype=torch.float64)
    s = task_statistics(groups @ groups.T, shares)
    assert math.isfinite(s["sqnorm_unbiased"][0].item())
    assert math.isnan(s["sqnorm_unbiased"][1].item()) and math.isnan(s["sqnorm_naive"][1].item())
    assert s["update_share"][0].item() == pytest.approx(1.0)


def test_half_shares_follow_the_aggregation(small_model):
    rollout = fake_rollout([2, 1], group_size=2)
    for agg in LOSS_AGGREGATIONS.names():
        trainer = fake_trainer(small_model, 2, loss_agg=agg)
        shares = half_shares(trainer, rollout, [0, 1, 0])
        assert shares.sum().item() == pytest.approx(1.0)
        if agg != "token_mean":  # by sequences: 2, 2, 2 of 6 rows, whatever their lengths
            assert shares.flatten().tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])
        else:
            n = rollout.response_mask.sum(1)
            assert shares[1, 0].item() == pytest.approx((n[4:].sum() / n.sum()).item())


class LinearScores(torch.nn.Module):
    """Per-sample gradients are given vectors: loss = sum_i c_i <theta, x_i>."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))


def test_cross_product_estimator_is_unbiased_and_naive_is_not():
    """Known gradient distribution: x_i ~ N(mu_k, sigma^2 I) per prompt, n_k prompts per task.

    E<g_A, g_B> = ||mu_k||^2, while E||g_k||^2 = ||mu_k||^2 + d sigma^2 / n_k. Over R batches we
    check the mean estimate against the truth within 4 standard errors (a false alarm rate of
    about 6e-5 per check), and that the naive estimator's bias is the predicted d sigma^2 / n_k.
    """
    gen = torch.Generator().manual_seed(0)
    dim, sigma, reps = 6, 1.5, 3000
    n = [4, 6]  # prompts per task (halves of 2 and 3)
    mu = [
        torch.full((dim,), 0.3, dtype=torch.float64),
        torch.linspace(-1, 1, dim, dtype=torch.float64),
    ]
    model = LinearScores(dim)
    groups = GroupGradients(model, "full", num_groups=4)
    total = sum(n)
    unbiased = torch.zeros(reps, 2, dtype=torch.float64)
    naive = torch.zeros(reps, 2, dtype=torch.float64)
    for r in range(reps):
        groups.reset()
        shares = torch.zeros(2, 2, dtype=torch.float64)
        for k in range(2):
            x = mu[k] + sigma * torch.randn(n[k], dim, generator=gen, dtype=torch.float64)
            for h in (0, 1):
                part = x[h * n[k] // 2 : (h + 1) * n[k] // 2]  # disjoint prompt halves
                (model.weight * part.sum(0) / total).sum().backward()  # c_i = 1 / N
                groups.close_group(2 * k + h)
                shares[k, h] = part.shape[0] / total
        s = task_statistics(groups.param_grams().sum(0), shares)
        unbiased[r], naive[r] = s["sqnorm_unbiased"], s["sqnorm_naive"]
    for k in range(2):
        truth = float(mu[k] @ mu[k])
        se_u = unbiased[:, k].std().item() / math.sqrt(reps)
        assert abs(unbiased[:, k].mean().item() - truth) < 4 * se_u
        bias = dim * sigma**2 / n[k]
        se_n = naive[:, k].std().item() / math.sqrt(reps)
        assert abs(naive[:, k].mean().item() - truth - bias) < 4 * se_n
        assert naive[:, k].mean().item() - truth > 8 * se_n  # the naive bias is real and visible


def test_scopes_and_proxy(small_model):
    names = [n for n, _ in small_model.named_parameters()]
    proxy = proxy_names(names)
    assert proxy and all("layers.1.self_attn" in n for n in proxy)
    members = scope_members(names, breakdown=True)
    assert {
        "full",
        "proxy",
        "attention",
        "mlp",
        "embeddings",
        "norms",
        "layer00",
        "layer01",
    } <= set(members)
    kinds = ["attention", "mlp", "embeddings", "norms"]
    covered = sorted(i for kind in kinds for i in members[kind])
    assert covered == sorted(members["full"])  # module kinds partition the parameters


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x: 1 2 3 4; y = [1, 3, 2, 4] -> d = 0 1 1 0 -> 1 - 6*2/(4*15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(spearman([1, 2], [1, 2]))
