"""Evaluations on fixed probe prompts: paired probe gains, one-step gains, the transfer matrix.

A probe samples ``probe_samples`` completions for each of a task's first ``probe_size`` held-out
prompts with fixed seeds and returns the mean reward per prompt, so two probes of the same task
are paired prompt by prompt (and seed by seed):

    gain/<task>/probe      probe now minus probe at the previous probe step
    gain/<task>/one_step   probe just after one update minus just before it
    transfer/<j>__<k>      probe gain on k from applying only task j's part of the step
                           (``/se``: its standard error over the probe prompts)

Intervals are the paired normal approximation over prompts; a gain whose interval holds 0 is
below the probe's resolution (reports say so and print the noise floor, the median half-width).

**Transfer.** Task j's part of a step is the fresh-gradient term of the AdamW update restricted to
its gradient: dtheta_j = -lr (1 - beta1) / (1 - beta1^t) * c * P * G_j (c: the clip factor). These
add up to the fresh-gradient part of the real step. T[j, k] = probe_k(theta + dtheta_j) -
probe_k(theta), paired on the same probe prompts and sampling seeds. The parameters are moved and
then put back exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from taskgrad import metrics as M
from taskgrad.config import Config
from taskgrad.gradients import GroupGradients
from taskgrad.tasks import Task

ProbeRewards = dict[str, torch.Tensor]  # task -> [n_probe] mean reward per probe prompt


@dataclass
class Prober:
    """Runs probes of a policy on its tasks' fixed probe prompts.

    ``engine`` samples (engines/: transformers generate on the policy, or vLLM); ``sync`` brings
    it to the policy's current parameters first (every rank calls it: the transfer matrix moves
    the parameters between probes). ``seeding`` is the launch's ``rollout.seeding``: with
    "prompt" each probe prompt's completions come from a stream seeded by (task, prompt), so
    under data parallelism (``parallel``) each rank samples its share of the prompts (prompt i on
    rank i mod N) and every rank gets all rewards: what one process with per-prompt seeding
    gets. With "batch", rank 0 samples them all and broadcasts them. ``parallel`` None: one
    process, an engine that follows the live model.
    """

    engine: Any
    tasks: list[Task]
    cfg: Config
    sync: Callable[[], object] | None = None
    parallel: Any = None
    seeding: str = "batch"

    def __call__(self) -> ProbeRewards:
        if self.sync is not None:
            self.sync()
        if self.parallel is None:
            rewards = self.probe()
        else:
            rewards = self.parallel.sharded(self.probe, split=self.seeding == "prompt")
        return {task: torch.tensor(values) for task, values in rewards.items()}

    @torch.no_grad()
    def probe(self, shard: int = 0, shards: int = 1) -> dict[str, list[float]]:
        """Per task, the mean reward of each of its probe prompts ``shard``, ``shard + shards``,
        ... (all of them by default)."""
        cfg, d = self.cfg, self.cfg.diagnostics
        out = {}
        for k, task in enumerate(self.tasks):
            pool = task.eval_set()[: d.probe_size]
            ids = list(range(shard, len(pool), shards))
            samples = [pool[i] for i in ids]
            if not samples:  # more ranks than probe prompts
                out[task.name] = []
                continue
            rollout = self.engine.generate(
                samples, [k] * len(samples),
                group_size=d.probe_samples, max_new_tokens=cfg.rollout.max_new_tokens,
                temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, seed=1000 + k,
                chat_template=cfg.model.chat_template,
                max_prompt_tokens=cfg.model.max_prompt_tokens,
                prompt_ids=ids if self.seeding == "prompt" else None,
            )  # fmt: skip
            rewards = [r.value for r in task.rewards(
                [samples[i // d.probe_samples] for i in range(len(rollout.completions))],
                rollout.completions,
            )]  # fmt: skip
            per_prompt = torch.tensor(rewards).view(len(samples), d.probe_samples).mean(1)
            out[task.name] = per_prompt.tolist()
        return out


def paired(after: torch.Tensor, before: torch.Tensor) -> tuple[float, float, float]:
    """Mean paired difference and its 95% normal-approximation interval."""
    diff = (after - before).double()
    mean = float(diff.mean())
    n = diff.numel()
    half = 1.96 * float(diff.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    return mean, mean - half, mean + half


def probe_rewards(now: ProbeRewards) -> dict[str, float]:
    return {M.probe_key(t): float(v.mean()) for t, v in now.items()}


def probe_gains(now: ProbeRewards, last: ProbeRewards) -> dict[str, float]:
    """Probe rewards, and the paired gain since ``last`` for tasks probed then too."""
    out = {}
    for task, values in now.items():
        out[M.probe_key(task)] = float(values.mean())
        if task in last:
            mean, lo, hi = paired(values, last[task])
            out[M.gain_key(task, "probe")] = mean
            out[M.gain_key(task, "probe_ci_low")] = lo
            out[M.gain_key(task, "probe_ci_high")] = hi
    return out


def one_step_gains(after: ProbeRewards, before: ProbeRewards) -> dict[str, float]:
    out = {}
    for task, values in after.items():
        mean, lo, hi = paired(values, before[task])
        out[M.gain_key(task, "one_step")] = mean
        out[M.gain_key(task, "one_step_ci_low")] = lo
        out[M.gain_key(task, "one_step_ci_high")] = hi
    return out


@torch.no_grad()
def transfer_matrix(
    prober: Prober,
    groups: GroupGradients,
    before: ProbeRewards,
    params_before: list[torch.Tensor],
    *,
    parts: torch.Tensor,
    precond: torch.Tensor,
    lr: float,
    clip_coef: float,
    beta1: float,
    adam_step: float,
) -> dict[str, float]:
    """T[j, k]: probe gain on task k from applying only task j's part of the step (see top),
    with its standard error over the probe prompts (``/se``).

    ``parts`` [K, P]: each task's applied contribution W_j G_j (the multipliers each parameter
    applied); ``params_before``: the in-scope parameters before the step; ``adam_step``: AdamW's
    step count t after it; ``lr``: the step's own rate; ``precond`` [P]: AdamW's P after the step.
    """
    params_after = [p.detach().clone() for _, p in groups.params]
    fresh = lr * (1 - beta1) / (1 - beta1**adam_step) * clip_coef
    out = {}
    for j, task_j in enumerate(prober.tasks):
        delta = -fresh * precond * parts[j]
        groups.assign(params_before, delta)
        for task_k, values in prober().items():
            diff = (values - before[task_k]).double()
            out[M.transfer_key(task_j.name, task_k)] = float(diff.mean())
            se = (
                float(diff.std(unbiased=True)) / math.sqrt(diff.numel())
                if diff.numel() > 1
                else math.nan
            )
            out[M.transfer_key(task_j.name, task_k, "se")] = se
    groups.assign(params_after)
    return out
