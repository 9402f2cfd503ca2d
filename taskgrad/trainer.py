"""The ``Trainer`` state and how it is built: tasks, policy (through accelerate), optimizer,
run directory, resume."""

from __future__ import annotations

import copy
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from taskgrad.balancing import STRATEGIES, Strategy
from taskgrad.config import Config, ConfigError
from taskgrad.gradients import GroupGradients
from taskgrad.policy import load_policy, resolve_model_path
from taskgrad.rundir import RunDir
from taskgrad.tasks import Task
from taskgrad.tasks.factory import build_tasks


@dataclass
class Trainer:
    """What the loop holds across steps (built by ``setup``)."""

    cfg: Config
    run: RunDir
    accelerator: object
    model: torch.nn.Module
    tokenizer: object
    ref_model: torch.nn.Module | None
    tasks: list[Task]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    groups: GroupGradients | None
    strategy: Strategy
    start_step: int = 1
    sampling: torch.Tensor | None = None  # [K] task probabilities set by a sampling strategy
    task_weights: torch.Tensor | None = None  # [K] the strategy's last multipliers
    history: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    probe_last: dict[str, torch.Tensor] = field(default_factory=dict)  # last probe rewards
    probe_before: tuple | None = None  # (probe rewards, in-scope params) just before an update
    clip_coef: float = 1.0  # the gradient clip factor of the last step
    last_lr: float = 0.0  # the learning rate the last step used


def lr_lambda(cfg: Config):
    """Linear warmup, then constant, linear or cosine decay to zero at the last step."""
    o = cfg.optim

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps)
        if o.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if o.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return f


def setup(cfg: Config, run_dir: Path | None, resume: bool) -> Trainer:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(cpu=cfg.device == "cpu")
    if cfg.device == "cuda" and accelerator.device.type != "cuda":
        raise RuntimeError("device: cuda was asked for but no CUDA device is visible")
    set_seed(cfg.seed)
    random.seed(cfg.seed)
    tasks = build_tasks(cfg.tasks, eval_size=cfg.eval.size, seed=cfg.seed)
    log = accelerator.print
    model_path = resolve_model_path(cfg.model, cfg.tasks, tasks, log=log)

    if resume:
        run = RunDir(run_dir)
        ckpts = run.checkpoints()
        if not ckpts:
            raise FileNotFoundError(f"{run_dir}: no checkpoint to resume from")
        weights_path = str(ckpts[-1])
    else:
        run = RunDir.create(cfg, run_dir)
        weights_path = model_path
    model, tokenizer = load_policy(weights_path, cfg.model)
    ref_model = None
    if cfg.grpo.kl_coef > 0:  # the reference is the initial policy, never the checkpoint
        ref_model, _ = load_policy(model_path, cfg.model)
        ref_model.requires_grad_(False).eval()
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    param_groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        param_groups, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    model, optimizer = accelerator.prepare(model, optimizer)
    if ref_model is not None:
        ref_model = ref_model.to(accelerator.device)
    groups = None
    if cfg.diagnostics.enabled:
        unwrapped = accelerator.unwrap_model(model)
        groups = GroupGradients(unwrapped, cfg.diagnostics.scope, num_groups=2 * len(tasks))
    try:
        strategy = STRATEGIES.get(cfg.balance.strategy)(len(tasks), **cfg.balance.options)
    except TypeError as e:
        raise ConfigError(f"balance.options: {e}") from None
    trainer = Trainer(
        cfg=cfg, run=run, accelerator=accelerator, model=model, tokenizer=tokenizer,
        ref_model=ref_model, tasks=tasks, optimizer=optimizer, scheduler=scheduler, groups=groups,
        strategy=strategy,
    )  # fmt: skip
    if resume:
        _restore(trainer, ckpts[-1])
    else:
        n_params = sum(p.numel() for p in model.parameters())
        run.write_versions(
            {"model_path": model_path, "parameters": n_params, "device": str(accelerator.device)}
        )
    return trainer


def _restore(trainer: Trainer, ckpt: Path) -> None:
    state = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.history = defaultdict(list, copy.deepcopy(state["history"]))
    trainer.probe_last = state.get("probe_last", {})
    trainer.strategy.load_state_dict(state.get("strategy", {}))
    trainer.sampling = state.get("sampling")
    trainer.task_weights = state.get("task_weights")
    trainer.start_step = state["step"] + 1
    trainer.run.truncate_metrics(state["step"])
