r"""The step's batch as one record, and the pure functions that build it.

``StepBatch`` holds what every backward pass and every statistic of a step reads: the rollout,
rewards, advantages, the global per-token loss weights c_it and the (task, half) shares s_kh,
each computed once, here. The micro-batches of the backward passes and the shares are both
indexed by the rollout's group index m = 2k + h, so the decomposition that makes per-task
gradients exact has one definition.

**Shares.** The batch loss restricted to a subset S of sequences is s_S times the same
aggregation applied to S alone, so s_S = sum_S c(batch) / sum_S c(S alone): N_S / N for
token_mean, B_S / B for seq_mean and constant (grpo.py). A task's gradient is then its group
gradients' sum divided by s_k = s_kA + s_kB (gradients.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from taskgrad.grpo import group_advantages, token_weights
from taskgrad.rollout import Rollout


@dataclass(frozen=True)
class StepBatch:
    """One step's scored rollout and everything derived from it before any backward."""

    rollout: Rollout
    num_tasks: int  # K
    rewards: torch.Tensor  # [B*G] float32
    advantages: torch.Tensor  # [B*G]
    token_weights: torch.Tensor  # [B*G, L] c_it, global over the batch
    shares: torch.Tensor  # [K, 2] s_kh, float64
    advantage_scale: torch.Tensor  # [B] what each group's centred rewards were multiplied by
    loss_agg: str = "token_mean"
    loss_constant: int = 1

    @property
    def num_groups(self) -> int:
        return 2 * self.num_tasks

    def micro_batches(self, size: int) -> Iterator[tuple[int, torch.Tensor, bool]]:
        """(group m, row indices, last of its group) in task-pure, half-pure micro-batches."""
        return micro_batches(self.rollout.group_index, self.num_groups, size)


def make_batch(
    rollout: Rollout,
    rewards: torch.Tensor,
    num_tasks: int,
    *,
    loss_agg: str,
    loss_constant: int,
    scale_rewards: bool,
    reward_std: str = "population",
    loss_scale: list[float] | None = None,
) -> StepBatch:
    """Advantages, token weights and shares of a scored rollout (rewards [B*G]).

    ``loss_scale`` [K] multiplies each task's token weights (an environment-side scale, as if the
    task's loss were that much larger); the shares are of the unscaled weights, so to every
    estimator the scale is part of the task's gradient, as an intrinsic imbalance would be.
    """
    advantages = group_advantages(
        rewards, rollout.group_size, scale_rewards, reward_std=reward_std
    )  # [B*G]
    weights = token_weights(rollout.response_mask, loss_agg, loss_constant)  # [B*G, L]
    if loss_scale is not None and any(x != 1.0 for x in loss_scale):
        row_scale = torch.tensor(loss_scale, dtype=weights.dtype)[rollout.task_index]  # [B*G]
        weights = weights * row_scale[:, None]
    shares = group_shares(
        rollout.response_mask, rollout.group_index, 2 * num_tasks, loss_agg, loss_constant
    ).view(num_tasks, 2)
    grouped = rewards.view(-1, rollout.group_size).double()  # [B, G]
    scale = torch.ones(grouped.shape[0], dtype=torch.float64)
    if scale_rewards:
        std = grouped.std(dim=1, unbiased=reward_std == "sample")
        scale = 1.0 / (std + 1e-4)
    return StepBatch(
        rollout, num_tasks, rewards, advantages, weights, shares, scale, loss_agg, loss_constant
    )


def group_shares(
    response_mask: torch.Tensor,
    group_index: torch.Tensor,
    num_groups: int,
    loss_agg: str,
    loss_constant: int,
) -> torch.Tensor:
    """s_m: each group's weight in the batch objective, [M] float64 (0 for an empty group)."""
    batch = token_weights(response_mask, loss_agg, loss_constant)  # [B*G, L]
    shares = torch.zeros(num_groups, dtype=torch.float64)
    for m in range(num_groups):
        rows = group_index == m
        own = token_weights(response_mask[rows], loss_agg, loss_constant).sum()
        if rows.any() and own > 0:
            shares[m] = float(batch[rows].sum() / own)
    return shares


def micro_batches(
    group_index: torch.Tensor, num_groups: int, size: int
) -> Iterator[tuple[int, torch.Tensor, bool]]:
    """Rows of each group m = 0..M-1 in chunks of at most ``size``; groups never mix."""
    for m in range(num_groups):
        rows = (group_index == m).nonzero().flatten()
        for start in range(0, rows.numel(), size):
            yield m, rows[start : start + size], start + size >= rows.numel()


@dataclass
class RowSums:
    """Per-row sums from the backward passes, [B*G] each (float32, on the CPU)."""

    entropy: torch.Tensor  # sum of next-token entropies over the completion
    clipped: torch.Tensor  # completion tokens where the PPO clip was active
    kl: torch.Tensor  # sum of k3 KL terms (zero without a reference model)
    loss: torch.Tensor  # the row's weighted loss (sums to the batch loss)

    @classmethod
    def zeros(cls, n_rows: int) -> RowSums:
        return cls(*(torch.zeros(n_rows) for _ in range(4)))


def rollout_statistics(batch: StepBatch, sums: RowSums, with_kl: bool) -> dict[str, torch.Tensor]:
    """The paper's candidate explanations per task: name -> [K] float64 (NaN if absent).

    Names and meanings: ``metrics.TASK_STATS``.
    """
    rollout, rewards, advantages = batch.rollout, batch.rewards, batch.advantages
    g, k = rollout.group_size, batch.num_tasks
    lengths = rollout.response_mask.sum(1)  # [B*G]
    zero_groups = (advantages.view(-1, g).abs().amax(1) < 1e-6).float()  # [B]
    prompt_task = rollout.task_index.view(-1, g)[:, 0]  # [B]
    names = [
        "prompts", "reward", "accuracy", "reward_var", "abs_advantage", "zero_adv_share",
        "response_length", "prompt_length", "entropy", "clip_frac", "loss", "batch_share",
        "objective_scale",
    ] + (["kl"] if with_kl else [])  # fmt: skip
    out = {name: torch.full((k,), float("nan"), dtype=torch.float64) for name in names}
    task_shares = batch.shares.sum(1)  # [K]
    for t in range(k):
        rows = rollout.task_index == t
        if not rows.any():
            continue
        prompts = prompt_task == t
        r = rewards[rows]
        n_tok = lengths[rows].sum().clamp(min=1)
        values = {
            "prompts": prompts.sum(),
            "reward": r.mean(),
            "accuracy": (r >= 1.0).float().mean(),
            "reward_var": r.mean() * (1 - r.mean()),
            "abs_advantage": advantages[rows].abs().mean(),
            "zero_adv_share": zero_groups[prompts].mean(),
            "response_length": lengths[rows].mean(),
            "prompt_length": rollout.prompt_tokens[rows].float().mean(),
            "entropy": sums.entropy[rows].sum() / n_tok,
            "clip_frac": sums.clipped[rows].sum() / n_tok,
            "loss": sums.loss[rows].sum(),
            "batch_share": task_shares[t],
            "objective_scale": objective_scale(batch, t),
        }
        if with_kl:
            values["kl"] = sums.kl[rows].sum() / n_tok
        for name, v in values.items():
            out[name][t] = v
    return out


def objective_scale(batch: StepBatch, task: int) -> float:
    """kappa_k in E g_k ~ -kappa_k grad J_k (J_k: the task's expected reward), on-policy.

    Within a group, E[(r_i - rbar) grad log pi(o_i)] = (1 - 1/G) grad J_p, so the task's own
    objective gradient is about (1 - 1/G) * (mean advantage scale of its groups) * lambda_k *
    grad J_k, lambda_k the mean per-sequence loss weight times the task's sequence count (1 / mean
    length for token_mean, the mean of 1 / length for seq_mean, 1 / loss_constant for constant).
    The std scale is taken as a constant per group, so this is an approximation where rewards are
    scaled; without scaling (Dr. GRPO) and with a fixed normaliser it is exact in expectation.
    Progress-driven strategies (FAMO) use it to turn g_k into the gradient of a loss on J_k.
    """
    rollout, g = batch.rollout, batch.rollout.group_size
    rows = rollout.task_index == task
    prompts = rollout.task_index.view(-1, g)[:, 0] == task
    own = token_weights(rollout.response_mask[rows], batch.loss_agg, batch.loss_constant)
    per_row = own.sum(1) / rollout.response_mask[rows].sum(1).clamp(min=1)  # [n] c_i
    lam = float(per_row.mean() * rows.sum())
    return (1 - 1 / g) * float(batch.advantage_scale[prompts].mean()) * lam
