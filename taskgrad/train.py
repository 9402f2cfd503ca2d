"""The multi-task GRPO loop, one step at a time, in named phases that hand each other records:

    sample prompts (PromptBatch) -> rollout (Rollout) -> score -> StepBatch (advantages,
    token weights, (task, half) shares) -> backward per (task, half) group (BackwardResult)
    -> task statistics -> balance (BalancedStep) -> clip + AdamW step (OptimizerStep)
    -> diagnostics, gains, evaluation -> log, checkpoint

Everything random in a step is seeded from (config seed, step), so a resumed run repeats the
uninterrupted one step for step. The math lives in grpo.py, batch.py, gradients.py and
diagnostics/; this file is the order of the phases.

Rollouts go through ``trainer.engine`` (engines/: transformers generate, or a colocated vLLM that
gets the parameters after every update, ``trainer.sync_engine``); with an engine that reports its
log-probs the step logs their mismatch with the trainer's per task and can correct for it
(``grpo.rollout_is_cap``). Under data parallelism (distributed.py) each rank samples and scores
its shard of the global prompts, the rollout is gathered, the batch and its normalisers are
global, and the backward runs this rank's rows of the same groups in the same order everywhere.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from taskgrad import metrics as M
from taskgrad.balancing.base import Balance, TaskGradStats, TaskWindow, prompt_counts
from taskgrad.batch import RowSums, StepBatch, make_batch, rollout_statistics
from taskgrad.config import Config
from taskgrad.diagnostics import gain, probe
from taskgrad.diagnostics.gradient import (
    BalancedStep,
    adam_metrics,
    gradient_metrics,
    preconditioner,
    task_parts,
)
from taskgrad.distributed import full, micro_batch_schedule
from taskgrad.engines.mismatch import logprob_mismatch, truncated_importance_weights
from taskgrad.gradients import GroupGradients, scope_members, task_statistics
from taskgrad.grpo import logprobs_and_entropy, policy_loss
from taskgrad.numerics import (
    Fault,
    NonFiniteError,
    check_backward,
    check_parameters,
    skipped_in_a_row,
    stop_message,
)
from taskgrad.rollout import PromptBatch, Rollout
from taskgrad.rundir import warn
from taskgrad.tasks import Task
from taskgrad.trainer import Trainer, setup

# Training statistics a strategy may read (Strategy.reads), from the step's task statistics.
STRATEGY_STATS = ("reward", "abs_advantage", "zero_adv_share", "response_length", "objective_scale")

# --- phase: sample prompts --------------------------------------------------------------------


def prompts_per_task(cfg: Config, sampling: torch.Tensor | None = None) -> list[int]:
    """Uniform over tasks by default; mixture weights scale each task's prompt count.

    A sampling strategy's probabilities redistribute the same total (same compute), keeping at
    least two prompts per task when possible so that every task stays measurable.
    """
    weights = [t.weight for t in cfg.tasks]
    k, total = len(weights), sum(weights)
    counts = [max(1, round(cfg.rollout.prompts_per_task * k * w / total)) for w in weights]
    if sampling is None:
        return counts
    n = sum(counts)
    return prompt_counts(sampling, n, minimum=2 if n >= 2 * k else 1)


def sample_prompts(
    cfg: Config,
    tasks: list[Task],
    sampling: torch.Tensor | None,
    step: int,
    counts: list[int] | None = None,
    stream: str = "prompts",
) -> PromptBatch:
    """Prompts of every task, their task index, and their half (0/1) for the split estimators.

    ``counts``: prompts per task (default: the mixture's, or the strategy's sampling); ``stream``
    names the random stream, so that a measurement batch never shares the training prompts'.
    """
    rng = random.Random(f"{cfg.seed}/{stream}/{step}")
    samples, task_index, half = [], [], []
    counts = counts if counts is not None else prompts_per_task(cfg, sampling)
    for k, (task, n) in enumerate(zip(tasks, counts, strict=True)):
        drawn = [task.sample(rng) for _ in range(n)]
        # Halves split prompts, never completions: a prompt's G completions share a baseline.
        order = list(range(n))
        rng.shuffle(order)
        halves = [0] * n
        for rank, i in enumerate(order):
            halves[i] = 0 if rank < (n + 1) // 2 else 1
        samples += drawn
        task_index += [k] * n
        half += halves
    return PromptBatch(samples, task_index, half)


def rollout(
    trainer: Trainer,
    prompts: PromptBatch,
    step: int,
    stream: str = "rollout",
    prompt_ids: list[int] | None = None,
) -> Rollout:
    """Completions of ``prompts`` from the engine, after it got the current parameters.

    ``prompt_ids``: the prompts' ids in the global batch (distributed.py), which seed each
    prompt's completions under per-prompt seeding (``trainer.seeding``).
    """
    cfg = trainer.cfg
    trainer.sync_engine()
    if prompt_ids is None:
        prompt_ids = list(range(len(prompts.samples)))
    return trainer.engine.generate(
        prompts.samples, prompts.task_index, half=prompts.half,
        group_size=cfg.rollout.group_size, max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
        seed=_seed(cfg.seed, stream, step), chat_template=cfg.model.chat_template,
        max_prompt_tokens=cfg.model.max_prompt_tokens,
        prompt_ids=prompt_ids if trainer.seeding == "prompt" else None,
    )  # fmt: skip


# --- phase: score -----------------------------------------------------------------------------


def score_rows(tasks: list[Task], rollout: Rollout) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """Rewards [B*G] from each task's verifier, and each row's reward components."""
    g = rollout.group_size
    rewards = torch.zeros(len(rollout.completions))
    components: list[dict[str, float]] = [{} for _ in rollout.completions]
    for k, task in enumerate(tasks):
        rows = (rollout.task_index == k).nonzero().flatten().tolist()
        if not rows:
            continue
        samples = [rollout.samples[i // g] for i in rows]
        scored = task.rewards(samples, [rollout.completions[i] for i in rows])
        rewards[rows] = torch.tensor([r.value for r in scored], dtype=torch.float32)
        for i, r in zip(rows, scored, strict=True):
            components[i] = dict(r.metrics)
    return rewards, components


def verifier_metrics(
    tasks: list[Task], rollout: Rollout, components: list[dict[str, float]]
) -> dict[str, float]:
    """The mean of each reward component over each task's rows."""
    metrics: dict[str, float] = {}
    for k, task in enumerate(tasks):
        scored = [components[i] for i in (rollout.task_index == k).nonzero().flatten().tolist()]
        for name in sorted({m for r in scored for m in r}):
            values = [r.get(name, 0.0) for r in scored]
            metrics[M.verifier_key(task.name, name)] = sum(values) / len(values)
    return metrics


def score(tasks: list[Task], rollout: Rollout) -> tuple[torch.Tensor, dict[str, float]]:
    """Rewards [B*G] from each task's verifier, and the means of its reward components."""
    rewards, components = score_rows(tasks, rollout)
    return rewards, verifier_metrics(tasks, rollout, components)


def step_batch(
    trainer: Trainer, prompts: PromptBatch, step: int, timer: PhaseTimer, stream: str = "rollout"
) -> tuple[StepBatch, dict[str, float]]:
    """This rank's shard of ``prompts`` sampled and scored, the global rollout gathered (one
    process: the rollout itself), and the StepBatch of the whole batch; verifier metrics."""
    cfg, parallel = trainer.cfg, trainer.parallel
    shard, ids = parallel.shard(prompts)
    with timer("rollout"):
        rolled = rollout(trainer, shard, step, stream=stream, prompt_ids=ids)
    with timer("score"):
        rewards, components = score_rows(trainer.tasks, rolled)
    rolled, rewards, components = parallel.gather_rollout(
        prompts, rolled, ids, rewards, components, trainer.tokenizer.pad_token_id
    )
    batch = make_batch(
        rolled, rewards, len(trainer.tasks), loss_agg=cfg.grpo.loss_agg,
        loss_constant=cfg.grpo.loss_constant or cfg.rollout.max_new_tokens,
        scale_rewards=cfg.grpo.scale_rewards, reward_std=cfg.grpo.reward_std,
        loss_scale=[t.loss_scale for t in cfg.tasks],
    )  # fmt: skip
    return batch, verifier_metrics(trainer.tasks, rolled, components)


# --- phase: per-group forward / backward -------------------------------------------------------


@dataclass
class BackwardResult:
    sums: RowSums  # per-row entropy, clipped tokens, KL and loss (global rows, every rank)
    logprobs: torch.Tensor  # [B*G, L] the log-probs the loss used (old log-probs of later passes)
    # [B*G] per-row sums of the truncated importance weights and of capped tokens (None: off)
    is_weights: torch.Tensor | None = None
    is_capped: torch.Tensor | None = None


def forward_logprobs(model, rollout: Rollout, rows: torch.Tensor, temperature: float):
    """Per-token log-probabilities and entropies of the completion tokens of ``rows``."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in rollout.rows(rows).items()}
    n_new = rollout.response_mask.shape[1]
    logits = model(**inputs, logits_to_keep=n_new + 1).logits[:, :-1]  # [b, L, V]
    targets = rollout.completion_ids[rows].to(device)  # [b, L]
    return logprobs_and_entropy(logits / temperature, targets)


def backward_groups(
    trainer: Trainer, batch: StepBatch, old_logprobs: torch.Tensor | None, capture: bool
) -> BackwardResult:
    """Backward over every (task, half) group in its own micro-batches.

    With ``capture``, each group's in-scope gradient goes to row m of ``trainer.groups``; ``.grad``
    of those parameters stays empty until ``balance`` sets it to the (weighted) sum. Under data
    parallelism this rank runs its rows of each group, as many micro-batches as every other rank
    (distributed.py), and the per-row sums (and, under DDP, the gradients) are summed after.
    """
    cfg, parallel, rollout = trainer.cfg, trainer.parallel, batch.rollout
    n_rows, n_new = rollout.response_mask.shape
    result = BackwardResult(RowSums.zeros(n_rows), torch.zeros(n_rows, n_new))
    engine_logprobs = rollout.rollout_logprobs is not None
    if engine_logprobs and cfg.grpo.rollout_is_cap is not None:
        result.is_weights, result.is_capped = torch.zeros(n_rows), torch.zeros(n_rows)
    if capture:
        trainer.groups.reset()
    schedule = micro_batch_schedule(
        rollout.group_index, parallel.owner(rollout.prompt_index), batch.num_groups,
        cfg.grpo.micro_batch_size, parallel.rank, parallel.world,
    )  # fmt: skip
    with parallel.no_sync(trainer.accelerator, trainer.model):
        for group, rows, last_of_group in schedule:
            if rows.numel():
                backward_rows(trainer, batch, rows, old_logprobs, result)
            else:  # this rank has no rows left in the group: the same collectives, no gradient
                zero_backward(trainer)
            if capture and last_of_group:
                trainer.groups.close_group(group)
    parallel.reduce_gradients(trainer.model, trainer.groups.buffer if capture else None)
    sums = result.sums
    mismatch = result.logprobs if engine_logprobs else None  # every row's, for the metrics
    is_sums = (result.is_weights, result.is_capped)
    parallel.all_reduce_(sums.entropy, sums.clipped, sums.loss, sums.kl, *is_sums, mismatch)
    return result


def backward_rows(
    trainer: Trainer,
    batch: StepBatch,
    rows: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    result: BackwardResult,
) -> None:
    """Forward and backward of one micro-batch; its per-row sums go into ``result``."""
    cfg, model, rollout = trainer.cfg, trainer.model, batch.rollout
    logprobs, entropy = forward_logprobs(model, rollout, rows, cfg.rollout.temperature)
    device = logprobs.device
    old = logprobs.detach() if old_logprobs is None else old_logprobs[rows].to(device)
    ref = None
    if trainer.ref_model is not None:
        with torch.no_grad():
            ref, _ = forward_logprobs(trainer.ref_model, rollout, rows, cfg.rollout.temperature)
    mask = rollout.response_mask[rows]
    is_weights = None
    if result.is_weights is not None:  # against the sampler: pi_old (first update's) / mu
        cap = cfg.grpo.rollout_is_cap
        engine = rollout.rollout_logprobs[rows].to(device)
        is_weights = truncated_importance_weights(old, engine, mask.to(device), cap=cap)
        result.is_weights[rows] = is_weights.float().cpu().sum(1)
        capped = (old.float() - engine.float() >= math.log(cap)) & mask.to(device).bool()
        result.is_capped[rows] = capped.float().cpu().sum(1)
    loss, stats = policy_loss(
        logprobs, old, batch.advantages[rows].to(device), batch.token_weights[rows].to(device),
        cfg.grpo.clip_eps, cfg.grpo.clip_eps_high, ref, cfg.grpo.kl_coef,
        dual_clip=cfg.grpo.dual_clip, is_weights=is_weights,
    )  # fmt: skip
    trainer.accelerator.backward(loss)
    sums = result.sums
    sums.entropy[rows] = (entropy.float().cpu() * mask).sum(1)
    sums.clipped[rows] = stats["clipped_rows"].float().cpu()
    sums.loss[rows] = stats["loss_rows"].float().cpu()
    if "kl_rows" in stats:
        sums.kl[rows] = stats["kl_rows"].float().cpu()
    result.logprobs[rows] = logprobs.detach().float().cpu()


def zero_backward(trainer: Trainer) -> None:
    """A forward and backward of one token with a zero loss: an exact zero gradient, and the
    collectives of a real micro-batch (FSDP2 all-gathers and reduce-scatters every layer)."""
    model = trainer.model
    device = next(model.parameters()).device
    token = trainer.tokenizer.bos_token_id
    ids = torch.full((1, 1), token if token is not None else 0, device=device)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1).logits
    trainer.accelerator.backward(logits.float().sum() * 0.0)


def engine_metrics(trainer: Trainer, batch: StepBatch, result: BackwardResult) -> dict[str, float]:
    """The trainer's log-probs against the engine's, per task, and the importance weights."""
    rollout = batch.rollout
    if rollout.rollout_logprobs is None:
        return {}
    out = logprob_mismatch(
        result.logprobs, rollout.rollout_logprobs, rollout.response_mask, rollout.task_index,
        trainer.task_names,
    )  # fmt: skip
    if result.is_weights is not None:
        tokens = float(rollout.response_mask.sum().clamp(min=1))
        out[M.train_key("is_weight_mean")] = float(result.is_weights.sum()) / tokens
        out[M.train_key("is_capped_share")] = float(result.is_capped.sum()) / tokens
    return out


# --- phase: balance ---------------------------------------------------------------------------


def task_window(
    trainer: Trainer, stats: dict[str, torch.Tensor], gram_stats: dict[str, torch.Tensor]
) -> TaskWindow:
    """Append this step's values to the last ``diagnostics.window`` steps; their means and SEs."""
    size = trainer.cfg.diagnostics.window
    values = {name: gram_stats[name] for name in ("sqnorm_unbiased", "sqnorm_naive")}
    values |= {name: stats[name] for name in ("reward", "abs_advantage", "zero_adv_share")}
    mean, se = {}, {}
    for name, v in values.items():
        rows = trainer.windows.setdefault(name, [])
        rows.append([float(x) for x in v])
        del rows[:-size]
        a = torch.tensor(rows, dtype=torch.float64)  # [n, K]
        n = torch.isfinite(a).sum(0)  # [K]
        mean[name] = a.nanmean(0)
        centred = torch.where(torch.isfinite(a), a - mean[name], 0.0)
        var = (centred**2).sum(0) / (n - 1).clamp(min=1)
        se[name] = torch.where(n >= 2, (var / n.clamp(min=1)).sqrt(), torch.nan)
    return TaskWindow(len(trainer.windows["reward"]), mean, se)


def balance(
    trainer: Trainer,
    batch: StepBatch,
    stats: dict[str, torch.Tensor],
    step: int,
    window: TaskWindow | None,
) -> tuple[BalancedStep, TaskWindow]:
    """Gram matrices of the captured groups -> strategy -> the combined gradient in ``.grad``.

    ``window``: the step's TaskWindow when an earlier inner update made it (else it is made).
    """
    groups = trainer.groups
    grams = groups.param_grams()  # [n_params, M, M]
    members = scope_members(groups.names, breakdown=True)
    if window is None:
        window = task_window(trainer, stats, task_statistics(grams.sum(0), batch.shares))
    inputs = TaskGradStats(
        tasks=trainer.task_names, step=step, group_gram=grams.sum(0), shares=batch.shares,
        module_grams={name: grams[idx].sum(0) for name, idx in members.items()},
        stats={name: stats[name] for name in STRATEGY_STATS if name in stats},
        gains=gain.latest_gains(
            trainer.history, trainer.task_names, trainer.cfg.diagnostics.gain_window
        ),
        window=window,
    )  # fmt: skip
    out = trainer.strategy(inputs)
    weights = out.task_weights.double()  # [K]
    param_weights = weights.repeat(len(groups.names), 1)  # [n_params, K]
    if out.module_weights:
        for scope, w in out.module_weights.items():
            param_weights[members[scope]] = w.double()
        groups.restore_sum(param_weights.repeat_interleave(2, dim=1))
    elif torch.all(weights == 1):
        groups.restore_sum()  # exactly the plain full-batch gradient
    else:
        groups.restore_sum(weights.repeat_interleave(2))
    if out.sampling is not None:
        trainer.sampling = out.sampling.double()
    return BalancedStep(grams, batch.shares, out, param_weights), window


def balance_metrics(
    tasks: list[str], step: BalancedStep, groups: GroupGradients
) -> dict[str, float]:
    """What the strategy applied: weights (per module kind where they differ), sampling, and its
    own values (finite ones only)."""
    out = step.balance
    if step.uniform_over_params:
        weights = step.param_weights[0]
    else:  # the mean multiplier over the scope's coordinates, and each module kind's own
        sizes = torch.tensor(
            [hi - lo for lo, hi in zip(groups.offsets[:-1], groups.offsets[1:], strict=True)],
            dtype=torch.float64,
        )
        weights = (sizes[:, None] * step.param_weights).sum(0) / sizes.sum()
    metrics = {M.balance_key(t, "weight"): float(w) for t, w in zip(tasks, weights, strict=True)}
    for kind, w in (out.module_weights or {}).items():
        for t, v in zip(tasks, w, strict=True):
            metrics[M.balance_key(t, f"weight/{kind}")] = float(v)
    if out.sampling is not None:
        sampling = zip(tasks, out.sampling, strict=True)
        metrics.update({M.balance_key(t, "sampling"): float(p) for t, p in sampling})
    for name, values in out.task_info.items():
        for t, v in zip(tasks, values, strict=True):
            if math.isfinite(v):
                metrics[M.balance_info_key(name, t)] = float(v)
    metrics.update({M.balance_info_key(k): float(v) for k, v in out.info.items()})
    return metrics


# --- phase: optimizer step --------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerStep:
    """What one optimizer step did."""

    grad_norm: float  # the global gradient norm before clipping
    clip_coef: float  # the factor clipping applied (1: none)
    lr: float  # the learning rate it used
    fault: Fault | None = None  # set when the update was skipped (nothing applied)


def optimizer_step(trainer: Trainer, step: int = 0) -> OptimizerStep:
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    clip = trainer.cfg.optim.max_grad_norm
    norm = full(torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf))
    lr = trainer.scheduler.get_last_lr()[0]
    if not math.isfinite(float(norm)):  # the combined gradient: never applied (numerics.py)
        return OptimizerStep(float(norm), 1.0, lr, fault=Fault("gradient"))
    clip_coef = min(1.0, clip / (float(norm) + 1e-6)) if clip > 0 else 1.0
    trainer.optimizer.step()
    check_parameters(trainer.policy, f"in the optimizer step of step {step}")
    trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.engine_stale = True  # the engine gets the new parameters before it samples again
    return OptimizerStep(grad_norm=float(norm), clip_coef=clip_coef, lr=lr)


def skip_update(trainer: Trainer, step: int, inner: int, fault: Fault) -> dict[str, float]:
    """Drop update ``inner`` of ``step`` and the step's later ones (see numerics.py)."""
    trainer.optimizer.zero_grad(set_to_none=True)
    for _ in range(trainer.cfg.grpo.inner_updates - inner):  # the schedule follows the step
        trainer.scheduler.step()
    trainer.engine_stale = True  # the engine may have slept (vLLM): it gets the weights again
    row = trainer.skipped + 1
    if trainer.parallel.is_main:
        warn(f"step {step} skipped: {fault.describe()} ({row} in a row; the run stops at "
             f"{trainer.cfg.optim.max_skipped_steps})")  # fmt: skip
    return fault.metrics()


def update(
    trainer: Trainer, step: int, balanced: BalancedStep | None, first: bool
) -> dict[str, float]:
    """The optimizer step, with the gradient diagnostics and the one-step/transfer probes.

    ``balanced``: the update's balance (None: not captured); ``first``: this is the step's first
    (on-policy) update, the one that is measured and that the probes bracket.
    """
    cfg, groups, d = trainer.cfg, trainer.groups, trainer.cfg.diagnostics
    measured = balanced if first else None
    one_step = first and step in d.one_step_at
    transfer = measured is not None and step in d.transfer_at
    probe_before = params_before = None
    if one_step or transfer:
        probe_before = trainer.prober()
        params_before = groups.clone_params() if groups is not None else None
    momentum = trainer.momentum
    geometry = measured is not None and (d.optimizer_geometry or momentum is not None)
    flat_before = groups.snapshot() if geometry else None
    opt = optimizer_step(trainer, step)
    if opt.fault is not None:  # nothing was applied: no momentum, no diagnostics of it
        return {M.train_key("grad_norm"): opt.grad_norm, M.train_key("lr"): opt.lr} | (
            opt.fault.metrics()
        )
    parts = task_parts(groups, balanced) if balanced is not None else None
    if momentum is not None:
        momentum.update(parts, opt.clip_coef)
    metrics = {M.train_key("grad_norm"): opt.grad_norm, M.train_key("lr"): opt.lr}
    tasks = trainer.task_names
    precond = None
    if measured is not None:
        metrics.update(gradient_metrics(groups, measured, tasks, d.scope, d.breakdown))
        if geometry or transfer:
            precond = preconditioner(groups, trainer.optimizer, cfg.optim.betas[1], cfg.optim.eps)
        adam_t = float(trainer.optimizer.state[groups.params[0][1]]["step"])
        if geometry:
            delta = groups.snapshot() - flat_before  # [P] the applied update
            if d.optimizer_geometry:
                metrics.update(adam_metrics(groups, measured, precond, delta, tasks, d.scope))
            if momentum is not None:
                metrics.update(momentum.metrics(precond, delta, opt.lr, adam_t, tasks, d.scope))
    if one_step:
        metrics.update(probe.one_step_gains(trainer.prober(), probe_before))
    if transfer and params_before:
        metrics.update(probe.transfer_matrix(
            trainer.prober, groups, probe_before, params_before, parts=parts, precond=precond,
            lr=opt.lr, clip_coef=opt.clip_coef, beta1=cfg.optim.betas[0], adam_step=adam_t,
        ))  # fmt: skip
    return metrics


# --- a dedicated measurement batch ----------------------------------------------------------


def measure_large(trainer: Trainer, step: int) -> dict[str, float]:
    """The gradient metrics of a dedicated batch of ``diagnostics.measure_prompts`` prompts per
    task from the policy as it is before this step's update; nothing is applied. Logged under
    the scope ``measure_<scope>``, for per-step precision where the training batch is too small.
    """
    cfg, groups, tasks = trainer.cfg, trainer.groups, trainer.task_names
    counts = [cfg.diagnostics.measure_prompts] * len(tasks)
    prompts = sample_prompts(cfg, trainer.tasks, None, step, counts=counts, stream="measure")
    batch, _ = step_batch(trainer, prompts, step, PhaseTimer(), stream="measure-rollout")
    backward_groups(trainer, batch, None, capture=True)
    trainer.model.zero_grad(set_to_none=True)
    ones = torch.ones(len(groups.names), len(tasks), dtype=torch.float64)
    measured = BalancedStep(groups.param_grams(), batch.shares, Balance(ones[0]), ones)
    out = gradient_metrics(groups, measured, tasks, cfg.diagnostics.scope, breakdown=False)
    groups.reset()
    relabelled = {}
    for key, value in out.items():
        if key != M.PROXY_AGREEMENT:
            family, scope, rest = key.split("/", 2)
            relabelled[f"{family}/measure_{scope}/{rest}"] = value
    return relabelled


# --- one step ---------------------------------------------------------------------------------


def train_step(trainer: Trainer, step: int) -> dict[str, float]:
    cfg = trainer.cfg
    timer = PhaseTimer()
    extra = {}
    every = cfg.diagnostics.measure_every
    if trainer.groups is not None and every > 0 and (step - 1) % every == 0:
        with timer("measure"):
            extra = measure_large(trainer, step)
    with timer("sample"):
        prompts = sample_prompts(cfg, trainer.tasks, trainer.sampling, step)
    batch, metrics = step_batch(trainer, prompts, step, timer)
    trainer.engine.sleep()  # frees the engine's memory for the backward where vLLM can
    measure = trainer.groups is not None and (step - 1) % cfg.diagnostics.every == 0
    # The first, on-policy update is the one measured; a strategy balances every update, and the
    # per-task AdamW moments need every update's parts.
    every_update = cfg.balance.strategy != "uniform" or trainer.momentum is not None
    old_logprobs, stats, window = None, {}, None
    for inner in range(cfg.grpo.inner_updates):
        capture = measure and (inner == 0 or every_update)
        with timer("backward"):
            result = backward_groups(trainer, batch, old_logprobs, capture)
        if inner == 0:
            old_logprobs = result.logprobs
            stats = rollout_statistics(batch, result.sums, trainer.ref_model is not None)
            metrics.update(rollout_metrics(trainer, batch, stats, result.sums))
            metrics.update(engine_metrics(trainer, batch, result))
        buffer = trainer.groups.buffer if capture else None
        fault = check_backward(
            result.sums.loss, batch.rollout.task_index, trainer.task_names, buffer
        )
        fault = trainer.parallel.first(fault)  # a shard's fault stops every rank's update
        if fault is not None:  # before the strategy: it never sees a non-finite Gram matrix
            metrics.update(skip_update(trainer, step, inner, fault))
            break
        balanced = None
        if capture:
            with timer("balance"):
                balanced, window = balance(trainer, batch, stats, step, window)
            if inner == 0:
                metrics.update(balance_metrics(trainer.task_names, balanced, trainer.groups))
        with timer("optimizer"):
            metrics.update(update(trainer, step, balanced, first=inner == 0))
        if M.SKIPPED in metrics:  # the combined gradient was non-finite (optimizer_step)
            metrics.update(skip_update(trainer, step, inner, Fault("gradient")))
            break
    if trainer.engine.needs_push:
        with timer("push"):  # after the step's last update (every rank)
            trainer.sync_engine()
    metrics.update(extra)
    metrics.update(timer.metrics())
    return metrics


def rollout_metrics(
    trainer: Trainer, batch: StepBatch, stats: dict[str, torch.Tensor], sums: RowSums
) -> dict[str, float]:
    """Per-task statistics as metrics; the reward history for windowed gains grows here."""
    out = M.per_task(trainer.task_names, stats)
    for k, task in enumerate(trainer.task_names):
        if math.isfinite(stats["reward"][k]):
            trainer.history[task].append(float(stats["reward"][k]))
    out[M.train_key("reward")] = float(batch.rewards.mean())
    out[M.train_key("loss")] = float(sums.loss.sum())
    return out


class PhaseTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] += time.perf_counter() - self.t0

        return _Span()

    def metrics(self) -> dict[str, float]:
        out = {M.time_key(k): v for k, v in self.seconds.items()}
        out[M.time_key("step")] = sum(self.seconds.values())
        return out


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little")


# --- evaluation -------------------------------------------------------------------------------


def eval_due(cfg: Config, step: int) -> bool:
    """Evaluate at ``step``? (0 is the evaluation before training; see EvalConfig.every.)"""
    every = cfg.eval.every
    if every is None:
        return step in (0, cfg.steps // 2, cfg.steps)
    return every > 0 and (step == 0 or step % every == 0 or step == cfg.steps)


def evaluate(trainer: Trainer, step: int) -> dict[str, float]:
    """Held-out accuracy per task on its fixed evaluation set (greedy, or avg@k with
    ``eval.samples`` = k); the per-prompt outcomes (how many of the k completions are correct)
    go to the run directory's evals.jsonl, for paired comparisons over prompts. Sampled by the
    rollout engine. Under data parallelism with per-prompt seeding each rank samples its share of
    every task's set (prompt i on rank i mod N, seeded by i: the outcomes equal one process's
    with ``rollout.seeding=prompt``) and every rank gets all outcomes; with batch seeding rank 0
    samples them all."""
    trainer.sync_engine()
    parallel = trainer.parallel
    outcomes = parallel.sharded(
        lambda rank, world: eval_outcomes(trainer, rank, world),
        split=trainer.seeding == "prompt",
    )
    return parallel.agree(lambda: eval_record(trainer, step, outcomes))


def eval_outcomes(trainer: Trainer, shard: int = 0, shards: int = 1) -> dict[str, list[int]]:
    """Per task, the number of correct completions (of max(k, 1)) for its held-out prompts
    ``shard``, ``shard + shards``, ... (all of them by default)."""
    cfg = trainer.cfg
    k = cfg.eval.samples
    outcomes: dict[str, list[int]] = {}
    for task in trainer.tasks:
        held_out = task.eval_set()
        ids = list(range(shard, len(held_out), shards))
        samples = [held_out[i] for i in ids]
        if not samples:  # more ranks than held-out prompts
            outcomes[task.name] = []
            continue
        rollout = trainer.engine.generate(
            samples, [0] * len(samples), group_size=max(k, 1),
            max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, seed=0,
            chat_template=cfg.model.chat_template, max_prompt_tokens=cfg.model.max_prompt_tokens,
            greedy=k == 0, prompt_ids=ids if trainer.seeding == "prompt" else None,
        )  # fmt: skip
        g = rollout.group_size
        scored = task.rewards([s for s in samples for _ in range(g)], rollout.completions)
        correct = [int(r.value >= 1.0) for r in scored]  # [n * g], grouped by prompt
        outcomes[task.name] = [sum(correct[i : i + g]) for i in range(0, len(correct), g)]
    return outcomes


def eval_record(trainer: Trainer, step: int, outcomes: dict[str, list[int]]) -> dict[str, float]:
    """Accuracies from the per-prompt outcomes; the outcomes logged (rank 0's run directory)."""
    cfg = trainer.cfg
    g = max(cfg.eval.samples, 1)
    out = {M.eval_key(name): sum(c) / (g * len(c)) for name, c in outcomes.items()}
    scored_tasks = [M.eval_key(t.name) for t in cfg.tasks if t.scored]  # a distractor's is noise
    out[M.EVAL_MEAN] = sum(out[key] for key in scored_tasks) / len(scored_tasks)
    trainer.run.log_eval(step, outcomes, samples=g)
    return out


def probe_due(cfg: Config, step: int) -> bool:
    every = cfg.diagnostics.probe_every
    return every > 0 and step % every == 0


# --- the loop ---------------------------------------------------------------------------------


def train(cfg: Config, run_dir: Path | None = None, resume: bool = False) -> Path:
    """Run (or resume) a training run; returns its run directory.

    Ctrl-C raises ``Interrupted`` (a KeyboardInterrupt whose message names the step and the
    resume command); the run directory's lock is released however the run ends.
    """
    trainer = setup(cfg, run_dir, resume)
    with trainer.run.guard(lambda: trainer.step, cfg.steps):
        return train_loop(trainer)


def train_loop(trainer: Trainer) -> Path:
    cfg = trainer.cfg
    run, progress = trainer.run, make_progress(cfg, trainer.parallel.is_main)
    last_checkpoint = time.monotonic()
    if trainer.step == 0 and eval_due(cfg, 0):
        initial = evaluate(trainer, 0)
        if cfg.diagnostics.probe_every > 0 and cfg.diagnostics.enabled:
            trainer.probe_last = trainer.prober()
            initial.update(probe.probe_rewards(trainer.probe_last))
        run.log({M.STEP: 0, **initial})
    with progress:
        bar = progress.add_task("train", total=cfg.steps, completed=trainer.step, info="")
        for step in range(trainer.step + 1, cfg.steps + 1):
            metrics = train_step(trainer, step)
            s = cfg.diagnostics.gain_window
            metrics.update(gain.window_gains(trainer.history, trainer.task_names, step, s))
            if probe_due(cfg, step):
                now = trainer.prober()
                metrics.update(probe.probe_gains(now, trainer.probe_last))
                trainer.probe_last = now
            if eval_due(cfg, step):
                metrics.update(evaluate(trainer, step))
            trainer.skipped = skipped_in_a_row(trainer.skipped, metrics)
            run.log({M.STEP: step, **metrics})
            trainer.step = step  # complete once logged (what an interruption reports)
            if trainer.skipped >= cfg.optim.max_skipped_steps:
                raise NonFiniteError(
                    stop_message(trainer.skipped, step, metrics, trainer.task_names)
                )
            # one clock for every rank: rank 0's decides when a time-based checkpoint is due
            minutes = trainer.parallel.broadcast((time.monotonic() - last_checkpoint) / 60)
            if (
                step % cfg.checkpoint_every == 0
                or step == cfg.steps
                or 0 < cfg.checkpoint_minutes <= minutes
            ):
                save_checkpoint(trainer, step)
                last_checkpoint = time.monotonic()
            progress.update(bar, advance=1, info=progress_info(trainer, metrics))
    trainer.parallel.on_main(lambda: run.finish(trainer.task_names))
    trainer.engine.close()
    return run.path


def save_checkpoint(trainer: Trainer, step: int) -> None:
    """Weights, tokenizer and trainer state; under data parallelism every rank takes part (FSDP2
    gathers the shards) and rank 0 writes."""
    state = trainer.state_dict()
    weights = trainer.parallel.savable(trainer.policy)
    trainer.parallel.on_main(lambda: trainer.run.save_checkpoint(
        step, weights, trainer.tokenizer, state, keep=trainer.cfg.keep_checkpoints
    ))  # fmt: skip


def progress_info(trainer: Trainer, metrics: dict[str, float]) -> str:
    parts = [
        f"{t[:5]} {metrics.get(M.task_key(t, 'reward'), math.nan):.2f}" for t in trainer.task_names
    ]
    return "reward " + " ".join(parts)


def make_progress(cfg: Config, main: bool = True):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.fields[info]}"), disable=not (cfg.progress and main),
    )  # fmt: skip
