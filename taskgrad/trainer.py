"""The ``Trainer``: what the loop holds across steps, how it is built, and its checkpoint schema.

Everything that lives only within a step travels in records (batch.py, train.py); the trainer
holds the policy, its optimizer, the tasks, the strategy and the few histories later steps read
(training rewards for windowed gains, the last probe for paired gains, the sampling
probabilities a strategy chose for the next batch). ``state_dict`` / ``load_state_dict`` are the
checkpoint schema, in one place.
"""

from __future__ import annotations

import copy
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from taskgrad.balancing import STRATEGIES, Strategy
from taskgrad.config import Config, ConfigError
from taskgrad.diagnostics.gradient import TaskMomentum
from taskgrad.diagnostics.probe import Prober, ProbeRewards
from taskgrad.gradients import GroupGradients, scope_names
from taskgrad.numerics import check_parameters
from taskgrad.policy import load_policy, resolve_model_path
from taskgrad.registry import parse_options
from taskgrad.rundir import RunDir, note
from taskgrad.tasks import Task, build_tasks

CHECKPOINT_SCHEMA = 3  # 1: before the step records; 2: before windows and task momenta


@dataclass
class Trainer:
    """What the loop holds across steps (built by ``setup``)."""

    cfg: Config
    run: RunDir
    accelerator: Any
    model: torch.nn.Module
    tokenizer: Any
    ref_model: torch.nn.Module | None
    tasks: list[Task]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    groups: GroupGradients | None  # the group buffers, reused every measured step
    strategy: Strategy
    prober: Prober
    step: int = 0  # the last completed step
    sampling: torch.Tensor | None = None  # [K] next batch's task probabilities (a strategy's)
    history: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    probe_last: ProbeRewards = field(default_factory=dict)  # the last probe's rewards
    skipped: int = 0  # steps skipped in a row, up to the last completed one (numerics.py)
    # the last diagnostics.window measured steps of the TaskWindow statistics: name -> rows [K]
    windows: dict[str, list[list[float]]] = field(default_factory=dict)
    momentum: TaskMomentum | None = None  # AdamW's first moment split by task

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def policy(self) -> torch.nn.Module:
        """The model without its accelerate wrapper (for generation and saving)."""
        return self.accelerator.unwrap_model(self.model)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint schema: everything a resumed run needs besides the weights."""
        return {
            "schema": CHECKPOINT_SCHEMA,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": dict(self.history),
            "probe_last": self.probe_last,
            "strategy": self.strategy.state_dict(),
            "sampling": self.sampling,
            "skipped": self.skipped,
            "windows": copy.deepcopy(self.windows),
            "momentum": self.momentum.state_dict() if self.momentum is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = defaultdict(list, copy.deepcopy(state["history"]))
        self.probe_last = state.get("probe_last", {})
        self.strategy.load_state_dict(state.get("strategy", {}))
        self.sampling = state.get("sampling")
        self.skipped = state.get("skipped", 0)
        self.windows = copy.deepcopy(state.get("windows", {}))
        if self.momentum is not None:
            if state.get("momentum") is None:  # a checkpoint from before: the split is unknown
                self.momentum.valid = False
            else:
                self.momentum.load_state_dict(state["momentum"])
        self.step = state["step"]


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


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    param_groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    o = cfg.optim
    return torch.optim.AdamW(param_groups, lr=o.lr, betas=o.betas, eps=o.eps)


def setup(cfg: Config, run_dir: Path | None, resume: bool) -> Trainer:
    """Build the trainer; every check that can fail comes before the run directory is written.

    Order: the device; the run directory's lock (resume: a second writer stops here) or its path
    (a fresh run: checked, not created); tasks, model, optimizer, buffers, strategy; only then is
    a fresh run directory created (atomically, locked; removed again if writing versions.json
    fails), so a setup that fails leaves no run directory behind. A resume continues from the
    newest complete checkpoint; a run with none is started over from step 0 in place, its config
    kept and its partial metrics moved aside (``RunDir.restart``).
    """
    check_device(cfg)
    if resume:
        run: RunDir | None = RunDir.open(run_dir)
        path = run.path
    else:
        run, path = None, RunDir.new_path(cfg, run_dir)
    try:
        return _build(cfg, run, path)
    except BaseException:
        if run is not None:
            run.close()
        raise


def check_device(cfg: Config) -> None:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device: cuda was asked for but no CUDA device is visible "
            "(torch.cuda.is_available() is False); use device=cpu or device=auto"
        )


def check_tasks(tasks: list[Task]) -> None:
    """Every task needs a held-out prompt (evaluation, probes) and one to train on."""
    for i, task in enumerate(tasks):
        if not task.eval_set():
            raise ConfigError(
                f"tasks[{i}] ({task.name}): no held-out prompts; a task needs at least 2 distinct "
                "prompts (one held out for evaluation, one to train on)"
            )


def _build(cfg: Config, run: RunDir | None, path: Path) -> Trainer:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(cpu=cfg.device == "cpu")
    if accelerator.num_processes > 1:
        raise ConfigError(
            f"launch: {accelerator.num_processes} processes were launched, but taskgrad trains "
            "in one process for now (per-rank gradients would be measured as if global)"
        )
    set_seed(cfg.seed)
    random.seed(cfg.seed)
    tasks = build_tasks(
        cfg.tasks, eval_size=cfg.eval.size, seed=cfg.seed, eval_split=cfg.eval.split
    )
    check_tasks(tasks)
    log = accelerator.print
    model_path = resolve_model_path(cfg.model, cfg.tasks, tasks, log=log)

    ckpt = None
    if run is not None:  # resume: the newest complete checkpoint, if any
        ckpts = run.checkpoints(note=note)
        ckpt = ckpts[-1] if ckpts else None
    model, tokenizer = load_policy(str(ckpt) if ckpt else model_path, cfg.model)
    check_parameters(model, f"in the model loaded from {ckpt or model_path}")
    ref_model = None
    if cfg.grpo.kl_coef > 0:  # the reference is the initial policy, never the checkpoint
        ref_model, _ = load_policy(model_path, cfg.model)
        ref_model.requires_grad_(False).eval()
    model.train()
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    model, optimizer = accelerator.prepare(model, optimizer)
    if ref_model is not None:
        ref_model = ref_model.to(accelerator.device)
    unwrapped = accelerator.unwrap_model(model)
    groups = None
    if cfg.diagnostics.enabled:
        check_buffer_fits(unwrapped, cfg, len(tasks), accelerator.device, log)
        try:
            groups = GroupGradients(unwrapped, cfg.diagnostics.scope, num_groups=2 * len(tasks))
        except ValueError as e:  # a scope regex that matches no parameter
            raise ConfigError(str(e)) from None
    cls = STRATEGIES.get(cfg.balance.strategy)
    options = parse_options(cls, cfg.balance.options, "balance.options", num_tasks=len(tasks))
    strategy = cls(len(tasks), options)
    prober = Prober(unwrapped, tokenizer, tasks, cfg)
    momentum = None
    if groups is not None and cfg.diagnostics.momentum_on():
        momentum = TaskMomentum(groups, len(tasks), cfg.optim.betas[0])
    n_params = sum(p.numel() for p in model.parameters())
    versions = {"model_path": model_path, "parameters": n_params, "device": str(accelerator.device)}
    state = None
    if ckpt is not None:
        state = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)
    # Everything that can fail has been built: now the run directory is written.
    if run is None:
        run = RunDir.create(cfg, path)
        try:
            run.write_versions(versions)
        except BaseException:
            run.discard()
            raise
    elif state is None:
        moved = run.restart()
        aside = f"; its partial metrics moved to {moved.name}" if moved else ""
        note(f"{path} has no complete checkpoint: starting it over from step 0{aside}")
        run.write_versions(versions)
    trainer = Trainer(
        cfg=cfg, run=run, accelerator=accelerator, model=model, tokenizer=tokenizer,
        ref_model=ref_model, tasks=tasks, optimizer=optimizer, scheduler=scheduler,
        groups=groups, strategy=strategy, prober=prober, momentum=momentum,
    )  # fmt: skip
    if state is not None:
        trainer.load_state_dict(state)
        run.mark_resume(trainer.step)
        note(f"resuming {path} from {ckpt.name}")
    return trainer


def buffer_bytes(model: torch.nn.Module, scope: str, num_groups: int) -> tuple[int, int]:
    """(in-scope trainable parameters, bytes of the float32 group buffers [2K, P])."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    keep = set(scope_names([n for n, _ in named], scope))
    n = sum(p.numel() for name, p in named if name in keep)
    itemsize = 8 if next(model.parameters()).dtype == torch.float64 else 4
    return n, n * num_groups * itemsize


def device_free_bytes(device: torch.device) -> int:
    """Memory that can still be allocated on ``device`` (GPU: free; CPU: MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62  # unknown: do not refuse


def check_buffer_fits(model, cfg: Config, num_tasks: int, device, log) -> None:
    """Print the group buffers' size; stop with one line when they cannot fit on the device.

    What must still fit: the buffers and AdamW's two moments (allocated at the first step).
    """
    groups = 2 * num_tasks + (num_tasks if cfg.diagnostics.momentum_on() else 0)
    n, size = buffer_bytes(model, cfg.diagnostics.scope, groups)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer_bytes = 2 * sum(p.numel() * p.element_size() for p in trainable)  # AdamW moments
    free = device_free_bytes(device)
    log(
        f"gradient buffers: scope {cfg.diagnostics.scope}, {groups} rows x "
        f"{n / 1e6:.2f}M parameters = {size / 2**30:.3f} GiB on {device}"
    )
    if size + optimizer_bytes > free:
        raise ConfigError(
            f"diagnostics.scope: the group buffers need {size / 2**30:.1f} GiB (plus "
            f"{optimizer_bytes / 2**30:.1f} GiB of AdamW state) but {device} has "
            f"{free / 2**30:.1f} GiB free; use diagnostics.scope=proxy or a narrower regex"
        )
