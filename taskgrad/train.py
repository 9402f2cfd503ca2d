"""The multi-task GRPO loop, one step at a time, in named phases:

    sample prompts (uniform over tasks) -> rollout (G completions each) -> score per task
    -> group advantages -> per-(task, half) micro-batches: forward, loss, backward
    -> per-task gradients and diagnostics -> clip -> AdamW step -> evaluate, log, checkpoint

Everything random in a step is seeded from (config seed, step), so a resumed run repeats the
uninterrupted one step for step. Math lives in grpo.py and gradients.py; this file is plumbing.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from pathlib import Path

import torch

from taskgrad import diagnostics as diag
from taskgrad.balancing import TaskGradStats
from taskgrad.balancing.base import prompt_counts
from taskgrad.config import Config
from taskgrad.gradients import scope_members
from taskgrad.grpo import group_advantages, logprobs_and_entropy, policy_loss, token_weights
from taskgrad.rollout import Rollout, generate
from taskgrad.tasks import Sample
from taskgrad.trainer import Trainer, setup

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


def sample_prompts(trainer: Trainer, step: int) -> tuple[list[Sample], list[int], list[int]]:
    """Prompts of every task, their task index, and their half (0/1) for the split estimators."""
    rng = random.Random(f"{trainer.cfg.seed}/prompts/{step}")
    samples, task_index, half = [], [], []
    counts = prompts_per_task(trainer.cfg, trainer.sampling)
    for k, (task, n) in enumerate(zip(trainer.tasks, counts, strict=True)):
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
    return samples, task_index, half


# --- phase: score -----------------------------------------------------------------------------


def score(trainer: Trainer, rollout: Rollout) -> tuple[torch.Tensor, dict[str, float]]:
    """Rewards [B*G] from each task's verifier, and per-task reward component means."""
    g = rollout.group_size
    rewards = torch.zeros(len(rollout.completions))
    metrics: dict[str, float] = {}
    for k, task in enumerate(trainer.tasks):
        rows = (rollout.task_index == k).nonzero().flatten().tolist()
        if not rows:
            continue
        samples = [rollout.samples[i // g] for i in rows]
        scored = task.rewards(samples, [rollout.completions[i] for i in rows])
        rewards[rows] = torch.tensor([r.value for r in scored], dtype=torch.float32)
        for name in sorted({m for r in scored for m in r.metrics}):
            values = [r.metrics.get(name, 0.0) for r in scored]
            metrics[f"task/{task.name}/{name}"] = sum(values) / len(values)
    return rewards, metrics


# --- phase: per-group forward / backward -------------------------------------------------------


def micro_batches(rollout: Rollout, half: list[int], k: int, size: int):
    """(group id, row indices) in task-pure, half-pure micro-batches; group m = 2 * task + half."""
    g = rollout.group_size
    row_half = torch.tensor(half).repeat_interleave(g)  # [B*G]
    for task in range(k):
        for h in (0, 1):
            rows = ((rollout.task_index == task) & (row_half == h)).nonzero().flatten()
            for start in range(0, rows.numel(), size):
                yield 2 * task + h, rows[start : start + size], start + size >= rows.numel()


def forward_logprobs(model, rollout: Rollout, rows: torch.Tensor, temperature: float):
    """Per-token log-probabilities and entropies of the completion tokens of ``rows``."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in rollout.rows(rows).items()}
    n_new = rollout.response_mask.shape[1]
    logits = model(**inputs, logits_to_keep=n_new + 1).logits[:, :-1]  # [b, L, V]
    targets = rollout.completion_ids[rows].to(device)  # [b, L]
    return logprobs_and_entropy(logits / temperature, targets)


def backward_groups(
    trainer: Trainer,
    rollout: Rollout,
    half: list[int],
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    capture: bool,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Backward over every group; returns per-row sums (entropy, clipped tokens, KL) and logprobs.

    With ``capture``, each group's in-scope gradient goes to ``trainer.groups``; ``.grad`` of
    those parameters stays empty until ``balance_step`` sets it to the (weighted) sum.
    """
    cfg, model = trainer.cfg, trainer.model
    n_rows, n_new = rollout.response_mask.shape
    weights = token_weights(
        rollout.response_mask,
        cfg.grpo.loss_agg,
        cfg.grpo.loss_constant or cfg.rollout.max_new_tokens,
    )  # [B*G, L] global per-token weights
    sums = {k: torch.zeros(n_rows) for k in ("entropy", "clipped", "kl", "loss")}
    logprobs_all = torch.zeros(n_rows, n_new)
    if capture:
        trainer.groups.reset()
    for group, rows, last_of_group in micro_batches(
        rollout, half, len(trainer.tasks), cfg.grpo.micro_batch_size
    ):
        logprobs, entropy = forward_logprobs(model, rollout, rows, cfg.rollout.temperature)
        device = logprobs.device
        old = logprobs.detach() if old_logprobs is None else old_logprobs[rows].to(device)
        ref = None
        if trainer.ref_model is not None:
            with torch.no_grad():
                ref, _ = forward_logprobs(trainer.ref_model, rollout, rows, cfg.rollout.temperature)
        loss, stats = policy_loss(
            logprobs, old, advantages[rows].to(device), weights[rows].to(device),
            cfg.grpo.clip_eps, cfg.grpo.clip_eps_high, ref, cfg.grpo.kl_coef,
        )  # fmt: skip
        trainer.accelerator.backward(loss)
        mask = rollout.response_mask[rows]
        sums["entropy"][rows] = (entropy.float().cpu() * mask).sum(1)
        sums["clipped"][rows] = stats["clipped_rows"].float().cpu()
        sums["loss"][rows] = stats["loss_rows"].float().cpu()
        if "kl_rows" in stats:
            sums["kl"][rows] = stats["kl_rows"].float().cpu()
        logprobs_all[rows] = logprobs.detach().float().cpu()
        if capture and last_of_group:
            trainer.groups.close_group(group)
    return sums, logprobs_all


# --- phase: optimizer step --------------------------------------------------------------------


def optimizer_step(trainer: Trainer) -> dict[str, float]:
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    clip = trainer.cfg.optim.max_grad_norm
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
    trainer.clip_coef = min(1.0, clip / (float(norm) + 1e-6)) if clip > 0 else 1.0
    lr = trainer.last_lr = trainer.scheduler.get_last_lr()[0]
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return {"train/grad_norm": float(norm), "train/lr": lr}


# --- one step ---------------------------------------------------------------------------------


def train_step(trainer: Trainer, step: int) -> dict[str, float]:
    cfg = trainer.cfg
    timer = PhaseTimer()
    with timer("sample"):
        samples, task_index, half = sample_prompts(trainer, step)
    with timer("rollout"):
        rollout = generate(
            trainer.accelerator.unwrap_model(trainer.model), trainer.tokenizer, samples, task_index,
            group_size=cfg.rollout.group_size, max_new_tokens=cfg.rollout.max_new_tokens,
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
            seed=_seed(cfg.seed, "rollout", step), chat_template=cfg.model.chat_template,
            max_prompt_tokens=cfg.model.max_prompt_tokens,
            generation_batch=cfg.rollout.generation_batch,
        )  # fmt: skip
    with timer("score"):
        rewards, metrics = score(trainer, rollout)
    advantages = group_advantages(rewards, cfg.rollout.group_size, cfg.grpo.scale_rewards)
    measure = trainer.groups is not None and (step - 1) % cfg.diagnostics.every == 0
    balancing = cfg.balance.strategy != "uniform"
    old_logprobs = None
    for inner in range(cfg.grpo.inner_updates):
        # The first, on-policy update is the one measured; a strategy balances every update.
        capture = measure and (inner == 0 or balancing)
        with timer("backward"):
            sums, logprobs = backward_groups(
                trainer, rollout, half, advantages, old_logprobs, capture
            )
        if inner == 0:
            old_logprobs = logprobs
            metrics.update(rollout_metrics(trainer, rollout, rewards, advantages, sums))
        snapshot = None
        if capture:
            with timer("balance"):
                snapshot, info = balance_step(trainer, rollout, half, metrics, step)
            metrics.update(info if inner == 0 else {})
        snapshot = snapshot if inner == 0 else None
        before = diag.snapshot_scope(trainer) if snapshot is not None else None
        with timer("optimizer"):
            metrics.update(optimizer_step_with_hooks(trainer, step, snapshot, before))
    metrics.update(timer.metrics())
    return metrics


def balance_step(trainer: Trainer, rollout: Rollout, half: list[int], metrics, step: int):
    """Gram matrices of the captured groups -> strategy -> the combined gradient in ``.grad``."""
    groups, tasks = trainer.groups, [t.name for t in trainer.tasks]
    shares = diag.half_shares(trainer, rollout, half)  # [K, 2]
    grams = groups.param_grams()  # [n_params, M, M]
    members = scope_members(groups.names, breakdown=True)
    inputs = TaskGradStats(
        tasks=tasks, step=step, group_gram=grams.sum(0), shares=shares,
        module_grams={name: grams[idx].sum(0) for name, idx in members.items()},
        stats={s: torch.tensor([metrics.get(f"task/{t}/{s}", math.nan) for t in tasks])
               for s in ("reward", "abs_advantage", "zero_adv_share", "response_length")},
        gains=diag.latest_gains(trainer),
    )  # fmt: skip
    balance = trainer.strategy(inputs)
    weights = balance.task_weights.double()  # [K]
    if balance.module_weights:
        per_param = weights.repeat_interleave(2).repeat(len(groups.names), 1)  # [n_params, M]
        for scope, w in balance.module_weights.items():
            per_param[members[scope]] = w.double().repeat_interleave(2)
        groups.restore_sum(per_param)
    elif torch.all(weights == 1):
        groups.restore_sum()  # exactly the plain full-batch gradient
    else:
        groups.restore_sum(weights.repeat_interleave(2))
    if balance.sampling is not None:
        trainer.sampling = balance.sampling.double()
    trainer.task_weights = weights
    info = {f"balance/{t}/weight": float(w) for t, w in zip(tasks, weights, strict=True)}
    info.update({f"balance/{k}": float(v) for k, v in balance.info.items()})
    return diag.GradSnapshot(grams=grams, shares=shares, weights=weights), info


def optimizer_step_with_hooks(trainer, step, snapshot, before) -> dict[str, float]:
    """The optimizer step, with the one-step/transfer probes and gradient diagnostics around it."""
    metrics = diag.before_update(trainer, step, snapshot is not None)
    metrics.update(optimizer_step(trainer))
    if snapshot is not None:
        metrics.update(diag.gradient_metrics(trainer, snapshot, before))
    metrics.update(diag.after_update(trainer, step))
    return metrics


def rollout_metrics(trainer, rollout, rewards, advantages, sums) -> dict[str, float]:
    """Per-task training statistics of the step (the paper's candidate explanations)."""
    g = rollout.group_size
    lengths = rollout.response_mask.sum(1)  # [B*G]
    zero_groups = (advantages.view(-1, g).abs().amax(1) < 1e-6).float()  # [B]
    out: dict[str, float] = {}
    for k, task in enumerate(trainer.tasks):
        rows = rollout.task_index == k
        if not rows.any():
            continue
        prompts = rollout.task_index.view(-1, g)[:, 0] == k
        r = rewards[rows]
        n_tok = lengths[rows].sum().clamp(min=1)
        stats = {
            "prompts": prompts.sum(),
            "reward": r.mean(),
            "accuracy": (r >= 1.0).float().mean(),
            "reward_var": (r.mean() * (1 - r.mean())),
            "abs_advantage": advantages[rows].abs().mean(),
            "zero_adv_share": zero_groups[prompts].mean(),
            "response_length": lengths[rows].mean(),
            "prompt_length": rollout.prompt_tokens[rows].float().mean(),
            "entropy": sums["entropy"][rows].sum() / n_tok,
            "clip_frac": sums["clipped"][rows].sum() / n_tok,
            "loss": sums["loss"][rows].sum(),
        }
        if trainer.ref_model is not None:
            stats["kl"] = sums["kl"][rows].sum() / n_tok
        for name, v in stats.items():
            out[f"task/{task.name}/{name}"] = float(v)
        trainer.history[task.name].append(float(r.mean()))
    out["train/reward"] = float(rewards.mean())
    out["train/loss"] = float(sums["loss"].sum())
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
        out = {f"time/{k}": v for k, v in self.seconds.items()}
        out["time/step"] = sum(self.seconds.values())
        return out


def _seed(*parts: object) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little")


# --- evaluation -------------------------------------------------------------------------------


def evaluate(trainer: Trainer) -> dict[str, float]:
    """Greedy held-out accuracy per task on its fixed evaluation set."""
    cfg = trainer.cfg
    model = trainer.accelerator.unwrap_model(trainer.model)
    out: dict[str, float] = {}
    for task in trainer.tasks:
        samples = task.eval_set()
        rollout = generate(
            model, trainer.tokenizer, samples, [0] * len(samples), group_size=1,
            max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
            temperature=1.0, top_p=1.0, seed=0, chat_template=cfg.model.chat_template,
            max_prompt_tokens=cfg.model.max_prompt_tokens,
            generation_batch=cfg.rollout.generation_batch, greedy=True,
        )  # fmt: skip
        scored = task.rewards(samples, rollout.completions)
        out[f"eval/{task.name}/accuracy"] = sum(r.value >= 1.0 for r in scored) / len(scored)
    out["eval/mean_accuracy"] = sum(out.values()) / len(trainer.tasks)
    return out


# --- the loop ---------------------------------------------------------------------------------


def train(cfg: Config, run_dir: Path | None = None, resume: bool = False) -> Path:
    """Run (or resume) a training run; returns its run directory."""
    trainer = setup(cfg, run_dir, resume)
    run, progress = trainer.run, make_progress(cfg)
    if trainer.start_step == 1 and cfg.eval.every > 0:
        run.log({"step": 0, **evaluate(trainer), **diag.initial_probe(trainer)})
    with progress:
        bar = progress.add_task("train", total=cfg.steps, completed=trainer.start_step - 1, info="")
        for step in range(trainer.start_step, cfg.steps + 1):
            metrics = train_step(trainer, step)
            metrics.update(diag.gain_metrics(trainer, step))
            if cfg.eval.every > 0 and (step % cfg.eval.every == 0 or step == cfg.steps):
                metrics.update(evaluate(trainer))
            run.log({"step": step, **metrics})
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                run.save_checkpoint(trainer, step)
            progress.update(bar, advance=1, info=progress_info(trainer, metrics))
    run.finish(trainer)
    return run.path


def progress_info(trainer: Trainer, metrics: dict[str, float]) -> str:
    parts = [
        f"{t.name[:5]} {metrics.get(f'task/{t.name}/reward', math.nan):.2f}" for t in trainer.tasks
    ]
    return "reward " + " ".join(parts)


def make_progress(cfg: Config):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.fields[info]}"), disable=not cfg.progress,
    )  # fmt: skip
