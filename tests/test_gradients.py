"""Per-task gradients: the group decomposition against an independent reference, the estimators'
math by hand, and the estimator's statistics on the real loop.

The reference (``reference_*`` below) shares no code with the code under test: it recomputes each
completion token's log-probability with an unpadded forward of that one sequence, writes the
loss weights c_it of every aggregation from their definitions, and differentiates its own loss.
Each group's buffered gradient is checked row by row, with unequal halves, so that a log-prob
misaligned by one position, a share formula that assumes equal halves, or halves that share
prompts each make a test here fail.
"""

from __future__ import annotations

import math

import pytest
import torch

from taskgrad.batch import StepBatch, group_shares, make_batch
from taskgrad.gradients import (
    GroupGradients,
    imbalance_ratio,
    proxy_names,
    scope_members,
    task_statistics,
)
from taskgrad.grpo import LOSS_AGGREGATIONS, group_advantages
from taskgrad.train import backward_groups
from tests.fakes import fake_rollout, fake_trainer

# --- the independent reference -------------------------------------------------------------------


def reference_logprobs(model, rollout, row: int) -> torch.Tensor:
    """log pi of row ``row``'s completion tokens from an unpadded forward of that sequence."""
    p = rollout.prompt_len
    prompt = rollout.input_ids[row, :p][rollout.attention_mask[row, :p].bool()]
    length = int(rollout.response_mask[row].sum())
    completion = rollout.input_ids[row, p : p + length]
    logits = model(input_ids=torch.cat([prompt, completion])[None]).logits[0]  # [T, V]
    logp = torch.log_softmax(logits.double(), dim=-1)
    first = len(prompt) - 1  # the logits at position t predict token t + 1
    return torch.stack([logp[first + j, completion[j]] for j in range(length)])  # [length]


def reference_weights(lengths: list[int], agg: str, constant: int) -> list[float]:
    """c_i of each row (every token of row i weighs c_i) for rows with these response lengths,
    the aggregation applied to exactly these rows (grpo.py's definitions, written again)."""
    n_rows, n_tokens = len(lengths), sum(lengths)
    if agg == "token_mean":
        return [1.0 / n_tokens] * n_rows
    if agg == "seq_mean":
        return [1.0 / (n_rows * n) for n in lengths]
    return [1.0 / (n_rows * constant)] * n_rows


def reference_gradient(model, rollout, advantages, rows, agg, constant, objective_rows=None):
    """Gradient of sum_{i in rows} sum_t c_it * (-A_i) * log pi_it, on-policy (ratio 1).

    ``objective_rows`` fixes whose aggregation the weights c come from: the whole batch for a
    group's part of the batch gradient, or ``rows`` alone for a subset's own objective.
    """
    objective_rows = rows if objective_rows is None else objective_rows
    lengths = {i: int(rollout.response_mask[i].sum()) for i in objective_rows}
    c = dict(
        zip(
            objective_rows,
            reference_weights([lengths[i] for i in objective_rows], agg, constant),
            strict=True,
        )
    )
    model.zero_grad(set_to_none=True)
    loss = sum(
        -float(advantages[i]) * c[i] * reference_logprobs(model, rollout, i).sum() for i in rows
    )
    loss.backward()
    grad = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grad


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal up to float32 rounding: Qwen2's RMSNorm computes in float32 even in a float64 model,
    so a padded and an unpadded forward agree to ~1e-7 relative, not to float64 precision."""
    return bool((got.double() - want).abs().max() <= 1e-5 * want.abs().max() + 1e-15)


def flat(grad: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([grad[n].reshape(-1) for n in names])


def rows_of(rollout, group: int) -> list[int]:
    return (rollout.group_index == group).nonzero().flatten().tolist()


# --- the decomposition on the real backward -----------------------------------------------------

# Three tasks: 3 prompts (halves of 2 and 1, unequal), 2 prompts, 1 prompt (half 1 empty).
PROMPTS, HALVES = [3, 2, 1], [0, 0, 1, 1, 0, 0]


def captured(model, agg: str, scope: str = "full", micro: int = 3, seed: int = 1):
    rollout = fake_rollout(PROMPTS, halves=HALVES, seed=seed)
    trainer = fake_trainer(model, 3, loss_agg=agg, micro_batch_size=micro)
    rewards = torch.randint(
        0, 2, (rollout.input_ids.shape[0],), generator=torch.Generator().manual_seed(seed)
    )
    batch = make_batch(
        rollout, rewards.double(), 3, loss_agg=agg, loss_constant=5, scale_rewards=True
    )
    trainer.groups = GroupGradients(model, scope, num_groups=6)
    backward_groups(trainer, batch, None, capture=True)
    return rollout, batch, trainer.groups


@pytest.mark.parametrize("agg", LOSS_AGGREGATIONS.names())
@pytest.mark.parametrize("scope", ["full", "proxy"])
def test_each_group_row_is_its_part_of_the_batch_gradient(small_model, agg, scope):
    rollout, batch, groups = captured(small_model, agg, scope)
    everything = list(range(rollout.input_ids.shape[0]))
    for m in range(6):
        rows = rows_of(rollout, m)
        if not rows:
            assert not groups.present[m] and torch.all(groups.buffer[m] == 0)
            continue
        expected = reference_gradient(
            small_model, rollout, batch.advantages, rows, agg, 5, everything
        )
        got, want = groups.buffer[m], flat(expected, groups.names)
        assert close(got, want), (m, (got - want).abs().max())
    # and their plain sum is the ordinary full-batch gradient, in .grad
    expected = reference_gradient(small_model, rollout, batch.advantages, everything, agg, 5)
    groups.restore_sum()
    for name, p in groups.params:
        assert close(p.grad, expected[name]), name


@pytest.mark.parametrize("agg", LOSS_AGGREGATIONS.names())
def test_shares_turn_group_rows_into_each_halfs_own_objective(small_model, agg):
    """g_kh = G_kh / s_kh is the gradient of half (k, h)'s own objective, and the estimators
    built from the Gram equal the reference's inner products, with unequal halves."""
    rollout, batch, groups = captured(small_model, agg)
    stats = task_statistics(groups.param_grams().sum(0), batch.shares)
    own = {}
    for m in range(6):
        rows = rows_of(rollout, m)
        if rows:
            grad = reference_gradient(small_model, rollout, batch.advantages, rows, agg, 5)
            own[m] = flat(grad, groups.names)
            assert close(groups.buffer[m] / batch.shares.view(-1)[m], own[m]), m
    # task 0: halves of 2 and 1 prompts
    assert stats["sqnorm_unbiased"][0].item() == pytest.approx(float(own[0] @ own[1]), rel=1e-5)
    task0 = reference_gradient(
        small_model, rollout, batch.advantages, rows_of(rollout, 0) + rows_of(rollout, 1), agg, 5
    )
    g0 = flat(task0, groups.names)
    assert stats["sqnorm_naive"][0].item() == pytest.approx(float(g0 @ g0), rel=1e-5)
    task1 = reference_gradient(
        small_model, rollout, batch.advantages, rows_of(rollout, 2) + rows_of(rollout, 3), agg, 5
    )
    g1 = flat(task1, groups.names)
    assert stats["inner"][0, 1].item() == pytest.approx(float(g0 @ g1), rel=1e-5)
    assert math.isnan(stats["sqnorm_unbiased"][2].item())  # one prompt: no second half


def test_shares_by_hand_with_unequal_halves():
    # rows (G=1): lengths 1, 2, 3 in group 0; 4 in group 1; 2, 2 in group 2
    mask = torch.zeros(6, 4)
    for i, n in enumerate([1, 2, 3, 4, 2, 2]):
        mask[i, :n] = 1
    group = torch.tensor([0, 0, 0, 1, 2, 2])
    # token_mean: N = 14 -> 6/14, 4/14, 4/14; seq_mean and constant: rows 3/6, 1/6, 2/6
    tm = group_shares(mask, group, 4, "token_mean", 4)
    assert tm.tolist() == pytest.approx([6 / 14, 4 / 14, 4 / 14, 0.0])
    for agg in ("seq_mean", "constant"):
        assert group_shares(mask, group, 4, agg, 4).tolist() == pytest.approx(
            [0.5, 1 / 6, 1 / 3, 0]
        )


def test_weighted_restore_is_the_weighted_loss_gradient(small_model):
    """Task weights applied to the group buffers equal the gradient of the task-weighted loss."""
    rollout = fake_rollout([2, 2])
    trainer = fake_trainer(small_model, 2)
    rewards = torch.tensor([1.0, 0, 0, 1] * 4, dtype=torch.float64)
    batch = make_batch(
        rollout, rewards, 2, loss_agg="token_mean", loss_constant=5, scale_rewards=True
    )
    weights = torch.tensor([0.3, 2.0], dtype=torch.float64)
    # reference: each row's advantage scaled by its task's weight (the loss is linear in it)
    scaled = batch.advantages * weights[rollout.task_index]
    rows = list(range(rollout.input_ids.shape[0]))
    expected = reference_gradient(small_model, rollout, scaled, rows, "token_mean", 5)
    trainer.groups = GroupGradients(small_model, "full", num_groups=4)
    backward_groups(trainer, batch, None, capture=True)
    trainer.groups.restore_sum(weights.repeat_interleave(2))
    for name, p in small_model.named_parameters():
        assert close(p.grad, expected[name]), name


# --- the estimators by hand ----------------------------------------------------------------------


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


def test_unequal_half_shares_by_hand():
    # task 0: G_A = [.3, 0] with s_A = .3 -> g_A = [1, 0]; G_B = [.1, .1] with s_B = .1 ->
    # g_B = [1, 1]: unbiased <g_A, g_B> = 1; g = (G_A + G_B) / .4 = [1, .25]: naive 1.0625.
    # Splitting s_k = .4 equally (.2 each) would give <[1.5, 0], [.5, .5]> = .75 instead.
    groups = torch.tensor([[0.3, 0.0], [0.1, 0.1]], dtype=torch.float64)
    s = task_statistics(groups @ groups.T, torch.tensor([[0.3, 0.1]], dtype=torch.float64))
    assert s["sqnorm_unbiased"].item() == pytest.approx(1.0)
    assert s["sqnorm_naive"].item() == pytest.approx(1.0625)


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


def test_advantages_population_and_sample_std_by_hand():
    # group [1, 0, 0, 0]: mean .25; population std sqrt(.1875) = .4330; sample sqrt(.25) = .5
    r = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    pop = group_advantages(r, 4, eps=0.0)
    sample = group_advantages(r, 4, eps=0.0, reward_std="sample")
    assert pop.tolist() == pytest.approx(
        [0.75 / 0.4330127, -0.25 / 0.4330127] + [-0.25 / 0.4330127] * 2, rel=1e-6
    )
    assert sample.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    assert group_advantages(r, 4, scale_rewards=False).tolist() == pytest.approx(
        [0.75, -0.25, -0.25, -0.25]
    )


def test_batch_record_is_consistent(small_model):
    rollout, batch, _ = captured(small_model, "token_mean")
    assert isinstance(batch, StepBatch) and batch.num_groups == 6
    assert batch.shares.sum().item() == pytest.approx(1.0)
    # every prompt's completions share one group (halves split prompts, never completions)
    g = rollout.group_size
    assert torch.all(rollout.group_index.view(-1, g) == rollout.group_index.view(-1, g)[:, :1])


def test_real_sampling_splits_prompts_not_completions(small_model, tokenizer):
    """The real prompt sampler and generation: every prompt's G completions land in one group,
    a task's halves are disjoint sets of prompt draws of sizes ceil(n/2) and floor(n/2)."""
    from taskgrad.config import load_config
    from taskgrad.rollout import generate
    from taskgrad.tasks import build_tasks
    from taskgrad.train import sample_prompts

    cfg = load_config(None, ["rollout.prompts_per_task=5", "rollout.max_new_tokens=2"])
    tasks = build_tasks(cfg.tasks, eval_size=4, seed=0)
    g = 3
    for step in range(1, 4):
        prompts = sample_prompts(cfg, tasks, None, step)
        rollout = generate(
            small_model.float(), tokenizer, prompts.samples, prompts.task_index,
            half=prompts.half, group_size=g, max_new_tokens=2, temperature=1.0, top_p=1.0,
            seed=step, chat_template="never",
        )  # fmt: skip
        per_prompt = rollout.group_index.view(-1, g)  # [B, G]
        assert torch.all(per_prompt == per_prompt[:, :1])
        assert torch.equal(
            per_prompt[:, 0], 2 * torch.tensor(prompts.task_index) + torch.tensor(prompts.half)
        )
        for k in range(len(tasks)):
            halves = [h for t, h in zip(prompts.task_index, prompts.half, strict=True) if t == k]
            assert sorted(halves) == [0, 0, 0, 1, 1]


def test_loss_scale_multiplies_the_tasks_gradient_not_its_share(small_model):
    """An environment-side loss scale: task 0's group rows are exactly 3x, the shares unchanged
    (so every estimator sees a 9x larger squared norm, as for an intrinsic imbalance)."""
    rollout = fake_rollout([2, 2], halves=[0, 1, 0, 1])
    rewards = torch.tensor([1.0, 0, 0, 1] * 4, dtype=torch.float64)
    rows = []
    for scale in ([1.0, 1.0], [3.0, 1.0]):
        trainer = fake_trainer(small_model, 2)
        batch = make_batch(rollout, rewards, 2, loss_agg="token_mean", loss_constant=5,
                           scale_rewards=True, loss_scale=scale)  # fmt: skip
        trainer.groups = GroupGradients(small_model, "full", num_groups=4)
        backward_groups(trainer, batch, None, capture=True)
        rows.append((trainer.groups.buffer.clone(), batch.shares))
    (plain, shares), (scaled, scaled_shares) = rows
    assert torch.equal(shares, scaled_shares)
    assert close(scaled[:2], 3 * plain[:2]) and close(scaled[2:], plain[2:])


def test_distractor_reward_ignores_the_completion():
    import random

    from taskgrad.tasks import TASKS

    task = TASKS.get("distractor")()
    samples = [task.sample(random.Random(i)) for i in range(2000)]
    a = [r.value for r in task.rewards(samples, ["0"] * len(samples))]
    b = [r.value for r in task.rewards(samples, [s.answer for s in samples])]
    assert a == b  # the same coins whatever was written
    assert abs(sum(a) / len(a) - 0.5) < 4 * (0.25 / len(a)) ** 0.5
