"""The multi-task GRPO loop, one step at a time, in named phases that hand each other records:

    sample prompts (PromptBatch) -> rollout (Rollout) -> score -> StepBatch (advantages,
    token weights, (task, half) shares) -> backward per (task, half) group (BackwardResult)
    -> task statistics -> balance (BalancedStep) -> clip + AdamW step (OptimizerStep)
    -> diagnostics, gains, evaluation -> log, checkpoint

Everything random in a step is seeded from (config seed, step), so a resumed run repeats the
uninterrupted one step for step. The math lives in grpo.py, batch.py, gradients.py and
diagnostics/; this file is the order of the phases.
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
from taskgrad.rollout import PromptBatch, Rollout, generate
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


def rollout(trainer: Trainer, prompts: PromptBatch, step: int, stream: str = "rollout") -> Rollout:
    cfg = trainer.cfg
    return generate(
        trainer.policy, trainer.tokenizer, prompts.samples, prompts.task_index,
        half=prompts.half, group_size=cfg.rollout.group_size,
        max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p, seed=_seed(cfg.seed, stream, step),
        chat_template=cfg.model.chat_template, max_prompt_tokens=cfg.model.max_prompt_tokens,
        generation_batch=cfg.rollout.generation_batch,
    )  # fmt: skip


# --- phase: score -----------------------------------------------------------------------------


def score(tasks: list[Task], rollout: Rollout) -> tuple[torch.Tensor, dict[str, float]]:
    """Rewards [B*G] from each task's verifier, and the means of its reward components."""
    g = rollout.group_size
    rewards = torch.zeros(len(rollout.completions))
    metrics: dict[str, float] = {}
    for k, task in enumerate(tasks):
        rows = (rollout.task_index == k).nonzero().flatten().tolist()
        if not rows:
            continue
        samples = [rollout.samples[i // g] for i in rows]
        scored = task.rewards(samples, [rollout.completions[i] for i in rows])
        rewards[rows] = torch.tensor([r.value for r in scored], dtype=torch.float32)
        for name in sorted({m for r in scored for m in r.metrics}):
            values = [r.metrics.get(name, 0.0) for r in scored]
            metrics[M.verifier_key(task.name, name)] = sum(values) / len(values)
    return rewards, metrics


# --- phase: per-group forward / backward -------------------------------------------------------


@dataclass
class BackwardResult:
    sums: RowSums  # per-row entropy, clipped tokens, KL and loss
    logprobs: torch.Tensor  # [B*G, L] the log-probs the loss used (old log-probs of later passes)


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
    of those parameters stays empty until ``balance`` sets it to the (weighted) sum.
    """
    cfg, model, rollout = trainer.cfg, trainer.model, batch.rollout
    n_rows, n_new = rollout.response_mask.shape
    sums = RowSums.zeros(n_rows)
    logprobs_all = torch.zeros(n_rows, n_new)
    if capture:
        trainer.groups.reset()
    for group, rows, last_of_group in batch.micro_batches(cfg.grpo.micro_batch_size):
        logprobs, entropy = forward_logprobs(model, rollout, rows, cfg.rollout.temperature)
        device = logprobs.device
        old = logprobs.detach() if old_logprobs is None else old_logprobs[rows].to(device)
        ref = None
        if trainer.ref_model is not None:
            with torch.no_grad():
                ref, _ = forward_logprobs(trainer.ref_model, rollout, rows, cfg.rollout.temperature)
        loss, stats = policy_loss(
            logprobs, old, batch.advantages[rows].to(device), batch.token_weights[rows].to(device),
            cfg.grpo.clip_eps, cfg.grpo.clip_eps_high, ref, cfg.grpo.kl_coef,
            dual_clip=cfg.grpo.dual_clip,
        )  # fmt: skip
        trainer.accelerator.backward(loss)
        mask = rollout.response_mask[rows]
        sums.entropy[rows] = (entropy.float().cpu() * mask).sum(1)
        sums.clipped[rows] = stats["clipped_rows"].float().cpu()
        sums.loss[rows] = stats["loss_rows"].float().cpu()
        if "kl_rows" in stats:
            sums.kl[rows] = stats["kl_rows"].float().cpu()
        logprobs_all[rows] = logprobs.detach().float().cpu()
        if capture and last_of_group:
            trainer.groups.close_group(group)
    return BackwardResult(sums, logprobs_all)


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
        stats={name: stats[name] for name in STRATEGY_STATS},
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
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
    lr = trainer.scheduler.get_last_lr()[0]
    if not math.isfinite(float(norm)):  # the combined gradient: never applied (numerics.py)
        return OptimizerStep(float(norm), 1.0, lr, fault=Fault("gradient"))
    clip_coef = min(1.0, clip / (float(norm) + 1e-6)) if clip > 0 else 1.0
    trainer.optimizer.step()
    check_parameters(trainer.policy, f"in the optimizer step of step {step}")
    trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return OptimizerStep(grad_norm=float(norm), clip_coef=clip_coef, lr=lr)


def skip_update(trainer: Trainer, step: int, inner: int, fault: Fault) -> dict[str, float]:
    """Drop update ``inner`` of ``step`` and the step's later ones (see numerics.py)."""
    trainer.optimizer.zero_grad(set_to_none=True)
    for _ in range(trainer.cfg.grpo.inner_updates - inner):  # the schedule follows the step
        trainer.scheduler.step()
    row = trainer.skipped + 1
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
    rolled = rollout(trainer, prompts, step, stream="measure-rollout")
    rewards, _ = score(trainer.tasks, rolled)
    batch = make_batch(
        rolled, rewards, len(tasks), loss_agg=cfg.grpo.loss_agg,
        loss_constant=cfg.grpo.loss_constant or cfg.rollout.max_new_tokens,
        scale_rewards=cfg.grpo.scale_rewards, reward_std=cfg.grpo.reward_std,
        loss_scale=[t.loss_scale for t in cfg.tasks],
    )  # fmt: skip
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
    with timer("rollout"):
        rolled = rollout(trainer, prompts, step)
    with timer("score"):
        rewards, metrics = score(trainer.tasks, rolled)
    batch = make_batch(
        rolled, rewards, len(trainer.tasks), loss_agg=cfg.grpo.loss_agg,
        loss_constant=cfg.grpo.loss_constant or cfg.rollout.max_new_tokens,
        scale_rewards=cfg.grpo.scale_rewards, reward_std=cfg.grpo.reward_std,
        loss_scale=[t.loss_scale for t in cfg.tasks],
    )  # fmt: skip
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
        buffer = trainer.groups.buffer if capture else None
        fault = check_backward(result.sums.loss, rolled.task_index, trainer.task_names, buffer)
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
    go to the run directory's evals.jsonl, for paired comparisons over prompts."""
    cfg = trainer.cfg
    k = cfg.eval.samples
    out: dict[str, float] = {}
    outcomes: dict[str, list[int]] = {}
    for task in trainer.tasks:
        samples = task.eval_set()
        rollout = generate(
            trainer.policy, trainer.tokenizer, samples, [0] * len(samples), group_size=max(k, 1),
            max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, seed=0,
            chat_template=cfg.model.chat_template, max_prompt_tokens=cfg.model.max_prompt_tokens,
            generation_batch=cfg.rollout.generation_batch, greedy=k == 0,
        )  # fmt: skip
        g = rollout.group_size
        scored = task.rewards([s for s in samples for _ in range(g)], rollout.completions)
        correct = [int(r.value >= 1.0) for r in scored]  # [n * g], grouped by prompt
        outcomes[task.name] = [sum(correct[i : i + g]) for i in range(0, len(correct), g)]
        out[M.eval_key(task.name)] = sum(correct) / len(correct)
    scored_tasks = [M.eval_key(t.name) for t in cfg.tasks if t.scored]  # a distractor's is noise
    out[M.EVAL_MEAN] = sum(out[key] for key in scored_tasks) / len(scored_tasks)
    trainer.run.log_eval(step, outcomes, samples=max(k, 1))
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
    run, progress = trainer.run, make_progress(cfg)
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
            minutes = (time.monotonic() - last_checkpoint) / 60
            if (
                step % cfg.checkpoint_every == 0
                or step == cfg.steps
                or 0 < cfg.checkpoint_minutes <= minutes
            ):
                run.save_checkpoint(
                    step, trainer.policy, trainer.tokenizer, trainer.state_dict(),
                    keep=cfg.keep_checkpoints,
                )  # fmt: skip
                last_checkpoint = time.monotonic()
            progress.update(bar, advance=1, info=progress_info(trainer, metrics))
    run.finish(trainer.task_names)
    return run.path


def progress_info(trainer: Trainer, metrics: dict[str, float]) -> str:
    parts = [
        f"{t[:5]} {metrics.get(M.task_key(t, 'reward'), math.nan):.2f}" for t in trainer.task_names
    ]
    return "reward " + " ".join(parts)


def make_progress(cfg: Config):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.fields[info]}"), disable=not cfg.progress,
    )  # fmt: skip
