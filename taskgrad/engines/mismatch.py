r"""Train/rollout log-prob mismatch: how far the sampler's policy is from the trainer's, per task.

A separate inference engine (vLLM) samples token o_t with probability mu(o_t) while the trainer
recomputes pi_old(o_t) with its own kernels; even with identical weights the two differ (other
matmul orders, fused kernels, bf16, batch shapes), so the "on-policy" GRPO update is slightly
off-policy. Two pure tools, no engine needed, for the training loop to wire in:

* ``logprob_mismatch``: per-task mean and max of |log pi_old - log mu| over response tokens, the
  monitoring metric (TRL logs the same quantity as ``sampling/sampling_logp_difference/{mean,max}``
  over the whole batch; here per task, since tasks differ in length and entropy).
* ``truncated_importance_weights``: token-level truncated importance sampling (TIS,
  Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"):

      w_t = min(exp(log pi_old(o_t) - log mu(o_t)), C)        (detached, per token)

  multiplied into each token's surrogate loss, so the update estimates the gradient under the
  sampler's distribution mu rather than pi_old. This is TRL's ``vllm_importance_sampling_mode=
  "token_truncate"`` (ratio clamped at ``vllm_importance_sampling_clip_max``, formerly
  ``vllm_importance_sampling_cap``; the per-token loss is multiplied by it) and verl's
  ``actor.tis_imp_ratio_cap`` (which makes the actor read ``rollout_log_probs``). The default
  C = 2 here; TRL's default ``clip_max`` is 3. The cap bounds the variance a single token with a
  tiny mu can add. No lower clamp (as in TIS); TRL also offers masking and sequence-level variants,
  which are not implemented here.

Both take the trainer's log-probs of the *rollout* policy (``old_logprobs`` of the first inner
update, before any optimizer step), not the current ones of later inner updates: the ratio
corrects the sampler, the PPO clip handles pi / pi_old.
"""

from __future__ import annotations

import math

import torch


def logprob_mismatch(
    trainer_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    task_index: torch.Tensor,
    task_names: list[str],
) -> dict[str, float]:
    """Mean and max |trainer - rollout| log-prob over response tokens, per task and overall.

    trainer_logprobs, rollout_logprobs, response_mask: [B*G, L]; task_index: [B*G].
    Returns ``task/{name}/logprob_diff_mean``, ``task/{name}/logprob_diff_max`` for every task
    with at least one response token, and ``train/logprob_diff_mean`` / ``train/logprob_diff_max``
    over all of them (the mean is per token, so long-answer tasks weigh more there).
    """
    diff = (trainer_logprobs.detach().float() - rollout_logprobs.detach().float()).abs()
    on = response_mask.bool()
    out: dict[str, float] = {}

    def stats(sel: torch.Tensor, prefix: str) -> None:
        values = diff[sel]
        if values.numel():
            out[f"{prefix}/logprob_diff_mean"] = float(values.mean())
            out[f"{prefix}/logprob_diff_max"] = float(values.max())

    for k, name in enumerate(task_names):
        stats(on & (task_index == k).unsqueeze(1), f"task/{name}")
    stats(on, "train")
    return out


def truncated_importance_weights(
    trainer_old_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    response_mask: torch.Tensor | None = None,
    cap: float = 2.0,
) -> torch.Tensor:
    """Per-token TIS weights ``min(exp(trainer_old - rollout), cap)`` [B*G, L], no gradient.

    Zero off ``response_mask`` when it is given. Multiply them into the per-token surrogate
    (``policy_loss``'s ``per_token``) before the loss weights; see the module docstring.
    """
    if cap <= 0:
        raise ValueError(f"cap must be positive, got {cap!r}")
    log_ratio = trainer_old_logprobs.detach().float() - rollout_logprobs.detach().float()
    # Clamp in log space first: exp of a large positive difference overflows to inf otherwise.
    weights = log_ratio.clamp(max=math.log(cap)).exp()
    if response_mask is not None:
        weights = weights * response_mask.float()
    return weights
