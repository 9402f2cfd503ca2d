"""GRPO math against hand-computed values."""

import math

import pytest
import torch

from taskgrad.grpo import (
    LOSS_AGGREGATIONS,
    group_advantages,
    logprobs_and_entropy,
    policy_loss,
    token_weights,
)


def test_group_advantages_scaled_and_unscaled():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # group 1: mean 0.5, population std 0.5 -> +-0.5 / (0.5 + 1e-4); group 2: all equal -> 0
    scaled = group_advantages(rewards, group_size=4, scale_rewards=True)
    expected = 0.5 / 0.5001
    assert torch.allclose(scaled[:4], torch.tensor([expected, -expected, -expected, expected]))
    assert torch.all(scaled[4:] == 0)
    unscaled = group_advantages(rewards, group_size=4, scale_rewards=False)  # Dr. GRPO
    assert torch.allclose(unscaled, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))


def test_group_advantages_one_correct_of_four():
    # rewards [1,0,0,0]: mean .25, std sqrt(.25*.75)=.4330 -> [.75, -.25, -.25, -.25] / .4331
    adv = group_advantages(torch.tensor([1.0, 0, 0, 0]), 4)
    std = math.sqrt(0.25 * 0.75) + 1e-4
    assert torch.allclose(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]) / std)


MASK = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0]])


def test_token_weights_by_hand():
    # token_mean: 4 response tokens -> 1/4 each
    tm = token_weights(MASK, "token_mean", constant=4)
    assert torch.allclose(tm, MASK / 4)
    # seq_mean: 2 sequences; row 1 has 3 tokens -> 1/(2*3), row 2 one token -> 1/2
    sm = token_weights(MASK, "seq_mean", constant=4)
    assert torch.allclose(sm, torch.tensor([[1 / 6, 1 / 6, 1 / 6, 0], [1 / 2, 0, 0, 0]]))
    # constant (Dr. GRPO): 1 / (B * L) = 1/8 on every response token
    cn = token_weights(MASK, "constant", constant=4)
    assert torch.allclose(cn, MASK / 8)


@pytest.mark.parametrize("agg", LOSS_AGGREGATIONS.names())
def test_weights_of_subsets_add_up(agg):
    """Weights are global, so a split of the rows keeps every row's weight: the basis of the
    per-task gradient identity. token_mean and seq_mean sum to exactly one over the batch."""
    w = token_weights(MASK, agg, constant=4)
    if agg != "constant":
        assert w.sum().item() == pytest.approx(1.0)
    assert torch.all(w[MASK == 0] == 0)


def test_unknown_aggregation_lists_valid_names():
    with pytest.raises(KeyError, match="valid: constant, seq_mean, token_mean"):
        token_weights(MASK, "median", constant=4)


def test_policy_loss_on_policy_is_minus_weighted_advantage():
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.1, 0.9]]))
    w = torch.tensor([[0.25, 0.25], [0.5, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    loss, stats = policy_loss(logp, logp.detach(), adv, w, clip_eps=0.2)
    # ratio 1 everywhere: -(0.25*2 + 0.25*2 + 0.5*(-1)) = -0.5
    assert loss.item() == pytest.approx(-0.5)
    assert stats["clipped_rows"].sum().item() == 0
    assert stats["loss_rows"].tolist() == pytest.approx([-1.0, 0.5])


def test_policy_loss_clipping_by_hand():
    old = torch.zeros(2, 1)
    new = torch.full((2, 1), math.log(1.5))  # ratio 1.5
    adv = torch.tensor([1.0, -1.0])
    w = torch.ones(2, 1)
    loss, stats = policy_loss(new, old, adv, w, clip_eps=0.2)
    # A=+1: min(1.5, clip->1.2) = 1.2 (clipped); A=-1: min(-1.5, -1.2) = -1.5 (not clipped)
    # loss = -(1.2) + 1.5 = 0.3
    assert loss.item() == pytest.approx(0.3, abs=1e-6)
    assert stats["clipped_rows"].tolist() == [1.0, 0.0]
    # clip-higher: eps_high 0.6 lets ratio 1.5 through for A=+1: -(1.5) + 1.5 = 0
    loss_high, _ = policy_loss(new, old, adv, w, clip_eps=0.2, clip_eps_high=0.6)
    assert loss_high.item() == pytest.approx(0.0, abs=1e-6)


def test_k3_kl_penalty_by_hand():
    logp = torch.zeros(1, 1)
    ref = torch.full((1, 1), math.log(2.0))
    # k3 = exp(ref - logp) - (ref - logp) - 1 = 2 - ln 2 - 1 = 0.30685
    loss, stats = policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 1), 0.2, None, ref, 0.5)
    assert stats["kl_rows"].item() == pytest.approx(2 - math.log(2) - 1, abs=1e-6)
    assert loss.item() == pytest.approx(0.5 * (2 - math.log(2) - 1), abs=1e-6)


def test_logprobs_and_entropy_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))  # [1, 2, 2]
    lp, ent = logprobs_and_entropy(logits, torch.tensor([[0, 1]]))
    assert lp.exp()[0].tolist() == pytest.approx([0.5, 0.1])
    h2 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert ent[0].tolist() == pytest.approx([math.log(2), h2], abs=1e-6)
