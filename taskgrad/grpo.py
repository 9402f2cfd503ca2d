r"""The GRPO objective: group advantages, the clipped surrogate, loss aggregations.

For a prompt q with G sampled completions o_1..o_G and 0/1 rewards r_i, GRPO (Shao et al. 2024,
DeepSeekMath) uses the group-normalised advantage, shared by every token of o_i:

    A_i = (r_i - mean_j r_j) / (std_j r_j + eps)    (scale_rewards=True)
    A_i =  r_i - mean_j r_j                         (scale_rewards=False: Dr. GRPO, Liu et al. 2025)

with std the population standard deviation (divide by G; ``reward_std="population"``, the
default here) or the sample one (G - 1, Bessel's correction: ``reward_std="sample"``, what TRL's
``torch.std`` and verl compute). With binary rewards they differ by the factor sqrt(G / (G - 1)),
a per-group constant that AdamW largely absorbs but that changes the relative size of groups.

and maximises the PPO-clipped surrogate per token t of o_i, with rho = pi(o_it) / pi_old(o_it):

    l_it = -min(rho * A_i, clip(rho, 1 - eps_low, 1 + eps_high) * A_i) + beta * KL_it
    KL_it = exp(ref - logp) - (ref - logp) - 1          (the k3 estimator, as in GRPO)

With ``dual_clip`` = c > 1 (verl's clip_ratio_c; Ye et al. 2020), a token with negative advantage
has its loss capped at -c * A_i, so a ratio far above 1 cannot make the loss unbounded; this only
acts when rho > c, i.e. after several inner updates on one batch.

The loss is a weighted sum L = sum_it c_it * l_it, whose per-token weights c_it are fixed by the
loss aggregation *for the whole batch before any backward*:

    token_mean:  c_it = 1 / N_tok                         (DAPO; N_tok = response tokens in batch)
    seq_mean:    c_it = 1 / (B * |o_i|)                   (the original GRPO)
    constant:    c_it = 1 / (B * L_const)                 (Dr. GRPO; L_const = max new tokens)

Because the weights are global, the loss of any subset of sequences is just the sum over its
tokens, so gradients of task-pure micro-batches add up exactly to the full-batch gradient — this
is what makes per-task gradients free (see gradients.py).

Departures from the GRPO paper, all deliberate: the std is the population one by default (above;
TRL and verl use Bessel's correction); token_mean is the default aggregation (as in DAPO, TRL and
verl); the KL term is off by default (beta=0, as in DAPO and Dr. GRPO); the std is taken over the
group only; dual clip is off by default (verl's default is on, c = 3).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from taskgrad.registry import Registry


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale_rewards: bool = True,
    eps: float = 1e-4,
    reward_std: str = "population",
) -> torch.Tensor:
    """Group-normalised advantages of ``rewards`` [B*G], each prompt's G completions adjacent."""
    grouped = rewards.view(-1, group_size)  # [B, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [B, G]
    if scale_rewards:
        unbiased = {"population": False, "sample": True}[reward_std]
        centred = centred / (grouped.std(dim=1, unbiased=unbiased, keepdim=True) + eps)
    return centred.reshape(-1)  # [B*G]


# --- loss aggregations: per-token weights c_it for the whole batch ---------------------------

LossAgg = Callable[[torch.Tensor, int], torch.Tensor]
LOSS_AGGREGATIONS: Registry[LossAgg] = Registry("loss aggregation")


@LOSS_AGGREGATIONS.register("token_mean")
def token_mean(response_mask: torch.Tensor, constant: int) -> torch.Tensor:
    """Every response token of the batch weighs the same: 1 / N_tok."""
    n_tok = response_mask.sum().clamp(min=1)
    return response_mask / n_tok  # [B*G, L]


@LOSS_AGGREGATIONS.register("seq_mean")
def seq_mean(response_mask: torch.Tensor, constant: int) -> torch.Tensor:
    """Every sequence weighs the same; tokens share their sequence's weight: 1 / (B |o_i|)."""
    lengths = response_mask.sum(dim=1, keepdim=True).clamp(min=1)  # [B*G, 1]
    return response_mask / (lengths * response_mask.shape[0])  # [B*G, L]


@LOSS_AGGREGATIONS.register("constant")
def constant_norm(response_mask: torch.Tensor, constant: int) -> torch.Tensor:
    """Dr. GRPO: a constant normaliser B * L_const, so no length bias."""
    return response_mask / (response_mask.shape[0] * constant)  # [B*G, L]


def token_weights(response_mask: torch.Tensor, agg: str, constant: int) -> torch.Tensor:
    return LOSS_AGGREGATIONS.get(agg)(response_mask.float(), constant)


# --- the per-token surrogate -------------------------------------------------------------------


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    dual_clip: float | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted clipped surrogate over a micro-batch.

    logprobs, old_logprobs, weights: [b, L]; advantages: [b]; weights already carry the response
    mask and the global normaliser. ``is_weights`` [b, L] (detached): truncated importance weights
    against the rollout engine (engines/mismatch.py), multiplying the surrogate, not the KL term,
    as TRL does; fixed per token, they keep the group decomposition exact. Returns the loss (a
    scalar to backward) and per-row sums (clipped tokens, KL, weighted loss) so callers can
    aggregate them exactly per task.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logprobs - old_logprobs)  # [b, L]
    adv = advantages.unsqueeze(1)  # [b, 1]
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + high) * adv
    per_token = -torch.minimum(unclipped, clipped)  # [b, L]
    if dual_clip is not None:  # cap the loss of negative-advantage tokens at -c A
        per_token = torch.where(adv < 0, torch.minimum(per_token, -dual_clip * adv), per_token)
    if is_weights is not None:
        per_token = per_token * is_weights
    mask = (weights > 0).float()
    stats = {"clipped_rows": ((clipped < unclipped).float() * mask).sum(1).detach()}  # [b]
    if ref_logprobs is not None and kl_coef > 0:
        delta = ref_logprobs - logprobs
        kl = torch.exp(delta) - delta - 1.0  # [b, L], k3 >= 0
        per_token = per_token + kl_coef * kl
        stats["kl_rows"] = (kl * mask).sum(1).detach()  # [b]
    weighted = per_token * weights  # [b, L]
    stats["loss_rows"] = weighted.sum(1).detach()  # [b], sums to the loss over rows
    return weighted.sum(), stats


def logprobs_and_entropy(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(target) per position and the entropy of each next-token distribution.

    logits [b, L, V], targets [b, L] -> ([b, L] with grad, [b, L] without), in float32.
    """
    logp_all = logits.float().log_softmax(-1)  # [b, L, V]
    logprobs = logp_all.gather(2, targets.unsqueeze(-1)).squeeze(-1)  # [b, L]
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # [b, L]
    return logprobs, entropy
