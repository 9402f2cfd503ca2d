"""Hand-made rollouts and a minimal trainer, for tests that need no generation."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from taskgrad.config import Config, TaskSpec
from taskgrad.distributed import Parallel
from taskgrad.rollout import Rollout
from taskgrad.tasks import Sample


def fake_rollout(
    prompts_per_task: list[int],
    group_size: int = 4,
    new_tokens: int = 5,
    seed: int = 0,
    halves: list[int] | None = None,
):
    """A rollout with random prompt/completion tokens and random response lengths.

    ``halves`` [B] puts each prompt in half 0 or 1 (default: alternating within each task).
    """
    gen = torch.Generator().manual_seed(seed)
    samples, task_index, half = [], [], []
    for k, n in enumerate(prompts_per_task):
        samples += [Sample(f"t{k}", f"p{k}{i}", "0") for i in range(n)]
        task_index += [k] * n
        half += [i % 2 for i in range(n)]
    half = halves if halves is not None else half
    n_rows = len(samples) * group_size
    prompt_len = 4
    prompt = torch.randint(4, 60, (n_rows, prompt_len), generator=gen)
    pmask = torch.ones(n_rows, prompt_len, dtype=torch.long)
    pmask[::3, 0] = 0  # some left padding
    completion = torch.randint(4, 60, (n_rows, new_tokens), generator=gen)
    lengths = torch.randint(1, new_tokens + 1, (n_rows,), generator=gen)
    rmask = (torch.arange(new_tokens)[None, :] < lengths[:, None]).float()
    tasks = torch.tensor(task_index, dtype=torch.long)
    return Rollout(
        samples=samples,
        group_size=group_size,
        task_index=tasks.repeat_interleave(group_size),
        prompt_index=torch.arange(len(samples)).repeat_interleave(group_size),
        group_index=(2 * tasks + torch.tensor(half)).repeat_interleave(group_size),
        input_ids=torch.cat([prompt, completion], 1),
        attention_mask=torch.cat([pmask, rmask.long()], 1),
        response_mask=rmask,
        completions=["x"] * n_rows,
        prompt_len=prompt_len,
        prompt_tokens=pmask.sum(1),
    )


def fake_trainer(model, num_tasks: int, **grpo):
    """What ``train.backward_groups`` reads of a trainer: config, model, buffers, accelerator."""
    cfg = Config(tasks=[TaskSpec(f"t{k}") for k in range(num_tasks)])
    cfg.rollout.max_new_tokens = 5
    for key, value in grpo.items():
        setattr(cfg.grpo, key, value)
    return SimpleNamespace(
        cfg=cfg,
        model=model,
        ref_model=None,
        groups=None,
        tasks=[SimpleNamespace(name=f"t{k}") for k in range(num_tasks)],
        accelerator=SimpleNamespace(backward=lambda loss: loss.backward()),
        parallel=Parallel(),
    )
