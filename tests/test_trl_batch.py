"""The TRL integration's batch layout, without TRL: plan, sampler, groups, shares, statistics.

Hand-computed values carry their arithmetic in a comment. tests/test_trl.py runs the same code
inside TRL's GRPOTrainer.
"""

from __future__ import annotations

import math

import pytest
import torch

from taskgrad.integrations import trl_batch as TB


def plan(n=(4, 4), g=2, p=1, b=2) -> TB.BatchPlan:
    tasks = tuple(f"t{k}" for k in range(len(n)))
    return TB.BatchPlan(tasks, tuple(n), g, p, b)


# --- plan -----------------------------------------------------------------------------------------


def test_plan_splits_prompts_equally_and_counts_micro_batches():
    # 128 rows / 8 completions = 16 prompts, 4 per task; a half is 2 prompts x 8 = 16 rows = 1 mb
    p = TB.make_plan(
        ["a", "b", "c", "d"], None, generation_batch_size=128, group_size=8, num_processes=1,
        micro_batch_rows=16, gradient_accumulation_steps=8,
    )  # fmt: skip
    assert p.prompts_per_task == (4, 4, 4, 4)
    assert p.micro_batches == 8 and p.half_rows(0) == 16


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"generation_batch_size": 24, "group_size": 4}, "do not split equally"),  # 6 prompts / 4
        ({"prompts": {"a": 2, "b": 2, "c": 3, "d": 1}}, "prompts_per_task[c]=3"),
        ({"micro_batch_rows": 3}, "per_device_train_batch_size=3"),  # a half is 4 rows
        ({"prompts": {"a": 2, "b": 2, "c": 2}}, "missing tasks ['d']"),
    ],
)
def test_plan_refuses_what_cannot_fill_whole_micro_batches(kwargs, names):
    args = {
        "generation_batch_size": 32, "group_size": 4, "num_processes": 1,
        "micro_batch_rows": 4, "gradient_accumulation_steps": 8,
    }  # fmt: skip
    prompts = kwargs.pop("prompts", None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=names.replace("[", r"\[").replace("]", r"\]")) as err:
        TB.make_plan(["a", "b", "c", "d"], prompts, **args)
    assert "\n" not in str(err.value)


# --- sampler --------------------------------------------------------------------------------------


def test_sampler_in_dataset_order_repeats_each_prompt_and_each_batch():
    # dataset sorted by task, 4 prompts each = one generation batch: TRL's RepeatSampler order
    sampler = TB.TaskStratifiedRepeatSampler([0] * 4 + [1] * 4, plan(), repeat_count=3,
                                             shuffle=False)  # fmt: skip
    out = list(sampler)
    one = [i for i in range(8) for _ in range(2)]  # each prompt G = 2 times
    assert out == one * 3 and len(sampler) == len(out)


def test_sampler_draws_n_k_distinct_prompts_per_task_with_halves_of_whole_prompts():
    task_index = [0] * 10 + [1] * 7 + [-1] * 3  # rows of no task are never drawn
    sampler = TB.TaskStratifiedRepeatSampler(task_index, plan(), repeat_count=1, seed=3)
    out = list(sampler)
    assert len(out) == len(sampler) == 1 * 8 * 2  # min(10 // 4, 7 // 4) = 1 batch of 8 prompts
    prompts = out[::2]
    assert out == [i for i in prompts for _ in range(2)]
    assert [task_index[i] for i in prompts] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(set(prompts)) == 8
    second = list(sampler)  # a new epoch draws a new order
    assert second != out


def test_sampler_gives_every_process_both_halves_of_every_task_in_group_order():
    p2 = plan(n=(4, 8), g=2, p=2, b=2)
    task_index = [0] * 4 + [1] * 8
    sampler = TB.TaskStratifiedRepeatSampler(task_index, p2, shuffle=True, seed=0)
    out = list(sampler)
    perm_rows = out[::2]  # the 12 prompts of the batch
    # accelerate hands process r the r-th contiguous half of the batch: 6 prompts, 12 rows
    slices = [perm_rows[:6], perm_rows[6:]]
    halves: dict[tuple[int, int], set[int]] = {}
    for rows in slices:
        local = [task_index[i] for i in rows for _ in range(2)]
        groups = TB.group_index(local, p2)[::2].tolist()
        assert groups == sorted(groups) == [0, 1, 2, 2, 3, 3]  # 1 + 1 of task 0, 2 + 2 of task 1
        for m, i in zip(groups, rows, strict=True):
            halves.setdefault((m // 2, m % 2), set()).add(i)
    for k, n in enumerate(p2.prompts_per_task):
        a, b = halves[(k, 0)], halves[(k, 1)]
        assert len(a) == len(b) == n // 2 and not a & b  # halves split prompts, across processes


# --- groups and micro-batches -----------------------------------------------------------------


def test_group_index_splits_each_task_by_prompt_in_order_of_appearance():
    p = plan(n=(2, 4), g=2)
    rows = [1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1]  # prompts: t1 t0 t1 t1 t0 t1
    assert TB.group_index(rows, p).tolist() == [2, 2, 0, 0, 2, 2, 3, 3, 1, 1, 3, 3]
    with pytest.raises(ValueError, match="mixes tasks"):
        TB.group_index([0, 1, 0, 0], plan(n=(2, 2), g=2))


def test_micro_batch_groups_refuses_a_mixed_micro_batch():
    assert TB.micro_batch_groups(torch.tensor([0, 0, 1, 1, 2, 2]), 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="mixes"):
        TB.micro_batch_groups(torch.tensor([0, 0, 1, 1, 1, 1]), 2)


def test_permute_moves_rows_of_tensors_and_lists_only():
    batch = {"x": torch.arange(3), "n": torch.tensor(5), "names": ["a", "b", "c"], "none": None}
    out = TB.permute(batch, torch.tensor([2, 0, 1]))
    assert out["x"].tolist() == [2, 0, 1] and out["names"] == ["c", "a", "b"]
    assert int(out["n"]) == 5 and out["none"] is None


# --- shares -------------------------------------------------------------------------------------


def masks(lengths: list[int], width: int = 4) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def test_shares_by_rows_and_by_tokens():
    p = plan(n=(2, 2), g=1, b=1)  # 4 rows, one prompt of one completion per group
    mask = masks([1, 3, 2, 2])  # T = 8
    groups = torch.tensor([0, 1, 2, 3])
    order = torch.arange(4)
    by_rows = TB.shares("grpo", mask, groups, p, 4, order)
    assert torch.allclose(by_rows, torch.full((2, 2), 0.25, dtype=torch.float64))  # N_m/N = 1/4
    for loss_type in ("dr_grpo", "luspo", "sapo"):
        assert torch.allclose(TB.shares(loss_type, mask, groups, p, 4, order), by_rows)
    by_tokens = TB.shares("dapo", mask, groups, p, 4, order)
    expected = torch.tensor([[1, 3], [2, 2]], dtype=torch.float64) / 8  # T_m / T
    assert torch.allclose(by_tokens, expected)
    for loss_type in ("cispo", "vespo"):
        assert torch.allclose(TB.shares(loss_type, mask, groups, p, 4, order), expected)


def test_bnpo_shares_and_advantage_scale_follow_trls_partition():
    p = plan(n=(2, 2), g=1, b=2)  # 4 rows; micro-batches of 2 rows; GA = 2
    mask = masks([1, 3, 2, 2])
    groups = torch.tensor([0, 1, 2, 3])
    plain = torch.tensor([0, 2, 1, 3])  # TRL's micro-batches: rows {0, 2} (3 tokens), {1, 3} (5)
    s = TB.shares("bnpo", mask, groups, p, 4, plain)
    # row weight T_i / (GA T_mb(i)): 1/6, 3/10, 2/6, 2/10; they sum to 1
    expected = torch.tensor([[1 / 6, 3 / 10], [2 / 6, 2 / 10]], dtype=torch.float64)
    assert torch.allclose(s, expected) and math.isclose(float(s.sum()), 1.0)
    order = torch.arange(4)  # ours: {0, 1} (4 tokens), {2, 3} (4 tokens)
    scale = TB.bnpo_advantage_scale(mask, plain, order, rows=2)
    assert torch.allclose(scale, torch.tensor([4 / 3, 4 / 5, 4 / 3, 4 / 5]))


# --- statistics ---------------------------------------------------------------------------------


def test_rollout_statistics_per_task():
    # task 0: one prompt (rewards 1, 0); task 1: one prompt (0.5, 0.5: zero advantage)
    task_index = torch.tensor([0, 0, 1, 1])
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    advantages = torch.tensor([0.7, -0.7, 0.0, 0.0])
    stats = TB.rollout_statistics(
        task_index, rewards, advantages, masks([1, 3, 2, 2]), masks([2, 2, 4, 4]),
        torch.tensor([[0.25, 0.25], [0.3, 0.2]], dtype=torch.float64), group_size=2,
    )  # fmt: skip
    assert stats["reward"].tolist() == [0.5, 0.5]
    assert stats["accuracy"][0] == 0.5 and math.isnan(stats["accuracy"][1])  # 0.5 is not 0/1
    assert stats["reward_var"][0] == 0.25  # 0.5 (1 - 0.5)
    assert stats["zero_adv_share"].tolist() == [0.0, 1.0]
    assert stats["response_length"].tolist() == [2.0, 2.0]  # (1 + 3) / 2, (2 + 2) / 2
    assert stats["prompt_length"].tolist() == [2.0, 4.0]
    assert torch.allclose(stats["batch_share"], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert stats["abs_advantage"].tolist() == pytest.approx([0.7, 0.0])


def test_micro_batch_sums_weight_means_by_tokens():
    sums = TB.MicroBatchSums(2)
    sums.add(0, loss=1.0, tokens=10, means={"entropy": 2.0})
    sums.add(0, loss=0.5, tokens=30, means={"entropy": 4.0})
    sums.add(1, loss=-1.0, tokens=5, means={})
    out = sums.statistics()
    assert out["loss"].tolist() == [1.5, -1.0]
    assert out["entropy"][0] == 3.5 and math.isnan(out["entropy"][1])  # (20 + 120) / 40
