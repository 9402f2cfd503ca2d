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
from taskgrad.balancing.base import TaskGradStats, prompt_counts
from taskgrad.batch import RowSums, StepBatch, make_batch, task_statistics
from taskgrad.config import Config
from taskgrad.diagnostics import gain, probe
from taskgrad.diagnostics.gradient import (
    BalancedStep,
    adam_metrics,
    gradient_metrics,
    preconditioner,
)
from taskgrad.gradients import scope_members
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
STRATEGY_STATS = ("reward", "abs_advantage", "zero_adv_share", "response_length")

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
    cfg: Config, tasks: list[Task], sampling: torch.Tensor | None, step: int
) -> PromptBatch:
    """Prompts of every task, their task index, and their half (0/1) for the split estimators."""
    rng = random.Random(f"{cfg.seed}/prompts/{step}")
    samples, task_index, half = [], [], []
    for k, (task, n) in enumerate(zip(tasks, prompts_per_task(cfg, sampling), strict=True)):
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


def rollout(trainer: Trainer, prompts: PromptBatch, step: int) -> Rollout:
    cfg = trainer.cfg
    return generate(
        trainer.policy, trainer.tokenizer, prompts.samples, prompts.task_index,
        half=prompts.half, group_size=cfg.rollout.group_size,
        max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p, seed=_seed(cfg.seed, "rollout", step),
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


def balance(
    trainer: Trainer, batch: StepBatch, stats: dict[str, torch.Tensor], step: int
) -> BalancedStep:
    """Gram matrices of the captured groups -> strategy -> the combined gradient in ``.grad``."""
    groups = trainer.groups
    grams = groups.param_grams()  # [n_params, M, M]
    members = scope_members(groups.names, breakdown=True)
    inputs = TaskGradStats(
        tasks=trainer.task_names, step=step, group_gram=grams.sum(0), shares=batch.shares,
        module_grams={name: grams[idx].sum(0) for name, idx in members.items()},
        stats={name: stats[name] for name in STRATEGY_STATS},
        gains=gain.latest_gains(
            trainer.history, trainer.task_names, trainer.cfg.diagnostics.gain_window
        ),
    )  # fmt: skip
    out = trainer.strategy(inputs)
    weights = out.task_weights.double()  # [K]
    if out.module_weights:
        per_param = weights.repeat_interleave(2).repeat(len(groups.names), 1)  # [n_params, M]
        for scope, w in out.module_weights.items():
            per_param[members[scope]] = w.double().repeat_interleave(2)
        groups.restore_sum(per_param)
    elif torch.all(weights == 1):
        groups.restore_sum()  # exactly the plain full-batch gradient
    else:
        groups.restore_sum(weights.repeat_interleave(2))
    if out.sampling is not None:
        trainer.sampling = out.sampling.double()
    return BalancedStep(grams=grams, shares=batch.shares, balance=out)


def balance_metrics(tasks: list[str], step: BalancedStep) -> dict[str, float]:
    """What the strategy chose: weights, sampling, and its own values (finite ones only)."""
    out = step.balance
    weights = zip(tasks, step.weights, strict=True)
    metrics = {M.balance_key(t, "weight"): float(w) for t, w in weights}
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

    ``balanced`` is the measured update's balance (None: not measured); ``first``: this is the
    step's first (on-policy) update, the one the probes bracket.
    """
    cfg, groups, d = trainer.cfg, trainer.groups, trainer.cfg.diagnostics
    one_step = first and step in d.one_step_at
    transfer = first and balanced is not None and step in d.transfer_at
    probe_before = params_before = None
    if one_step or transfer:
        probe_before = trainer.prober()
        params_before = groups.clone_params() if groups is not None else None
    geometry = balanced is not None and d.optimizer_geometry
    flat_before = groups.snapshot() if geometry else None
    opt = optimizer_step(trainer, step)
    metrics = {M.train_key("grad_norm"): opt.grad_norm, M.train_key("lr"): opt.lr}
    if opt.fault is not None:
        return metrics | opt.fault.metrics()
    tasks = trainer.task_names
    precond = None
    if balanced is not None:
        metrics.update(gradient_metrics(groups, balanced, tasks, d.scope, d.breakdown))
        if geometry or transfer:
            precond = preconditioner(groups, trainer.optimizer, cfg.optim.betas[1], cfg.optim.eps)
        if geometry:
            delta = groups.snapshot() - flat_before  # [P] the applied update
            metrics.update(adam_metrics(groups, balanced, precond, delta, tasks, d.scope))
    if one_step:
        metrics.update(probe.one_step_gains(trainer.prober(), probe_before))
    if transfer and params_before:
        adam_t = float(trainer.optimizer.state[groups.params[0][1]]["step"])
        metrics.update(probe.transfer_matrix(
            trainer.prober, groups, probe_before, params_before, task_weights=balanced.weights,
            precond=precond, lr=opt.lr, clip_coef=opt.clip_coef, beta1=cfg.optim.betas[0],
            adam_step=adam_t,
        ))  # fmt: skip
    return metrics


# --- one step ---------------------------------------------------------------------------------


def train_step(trainer: Trainer, step: int) -> dict[str, float]:
    cfg = trainer.cfg
    timer = PhaseTimer()
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
    )  # fmt: skip
    measure = trainer.groups is not None and (step - 1) % cfg.diagnostics.every == 0
    balancing = cfg.balance.strategy != "uniform"
    old_logprobs, stats = None, {}
    for inner in range(cfg.grpo.inner_updates):
        # The first, on-policy update is the one measured; a strategy balances every update.
        capture = measure and (inner == 0 or balancing)
        with timer("backward"):
            result = backward_groups(trainer, batch, old_logprobs, capture)
        if inner == 0:
            old_logprobs = result.logprobs
            stats = task_statistics(batch, result.sums, trainer.ref_model is not None)
            metrics.update(rollout_metrics(trainer, batch, stats, result.sums))
        buffer = trainer.groups.buffer if capture else None
        fault = check_backward(result.sums.loss, rolled.task_index, trainer.task_names, buffer)
        if fault is not None:  # before the strategy: it never sees a non-finite Gram matrix
            metrics.update(skip_update(trainer, step, inner, fault))
            break
        balanced = None
        if capture:
            with timer("balance"):
                balanced = balance(trainer, batch, stats, step)
            if inner == 0:
                metrics.update(balance_metrics(trainer.task_names, balanced))
        with timer("optimizer"):
            measured = balanced if inner == 0 else None
            metrics.update(update(trainer, step, measured, first=inner == 0))
        if M.SKIPPED in metrics:  # the combined gradient was non-finite (optimizer_step)
            metrics.update(skip_update(trainer, step, inner, Fault("gradient")))
            break
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


def evaluate(trainer: Trainer) -> dict[str, float]:
    """Greedy held-out accuracy per task on its fixed evaluation set."""
    cfg = trainer.cfg
    out: dict[str, float] = {}
    for task in trainer.tasks:
        samples = task.eval_set()
        rollout = generate(
            trainer.policy, trainer.tokenizer, samples, [0] * len(samples), group_size=1,
            max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
            temperature=1.0, top_p=1.0, seed=0, chat_template=cfg.model.chat_template,
            max_prompt_tokens=cfg.model.max_prompt_tokens,
            generation_batch=cfg.rollout.generation_batch, greedy=True,
        )  # fmt: skip
        scored = task.rewards(samples, rollout.completions)
        out[M.eval_key(task.name)] = sum(r.value >= 1.0 for r in scored) / len(scored)
    out[M.EVAL_MEAN] = sum(out.values()) / len(trainer.tasks)
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
    if trainer.step == 0 and cfg.eval.every > 0:
        initial = evaluate(trainer)
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
            if cfg.eval.every > 0 and (step % cfg.eval.every == 0 or step == cfg.steps):
                metrics.update(evaluate(trainer))
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
