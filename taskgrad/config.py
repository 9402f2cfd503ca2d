"""One typed config tree: defaults <- YAML preset <- ``key=value`` overrides.

The dataclasses below are the schema and the documentation: one line of help per field, units in
the help, valid values as ``Literal``. ``load_config`` resolves a preset and overrides into a
validated ``Config``; unknown keys, unknown tasks and invalid values raise ``ConfigError`` with a
one-line message naming the field. ``to_dict`` gives the resolved tree that a run writes to
``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from taskgrad.schema import ConfigError, from_dict, need, to_dict

__all__ = ["Config", "ConfigError", "from_dict", "load_config", "need", "to_dict"]


@dataclass
class TaskSpec:
    name: str  # instance name, used in metric keys (task/<name>/reward)
    type: str | None = None  # registered task, or package.module:Class; defaults to `name`
    weight: float = 1.0  # mixture weight: prompts per step are proportional to it
    options: dict[str, Any] = field(default_factory=dict)  # the task class's Options fields
    # a multiplier on the task's per-token loss weights: an environment-side scale imbalance
    # (a positive control; strategies see only its effect on the gradients)
    loss_scale: float = 1.0
    # whether the task counts in the accuracy endpoints (mean / worst task); false for a
    # distractor, whose accuracy is noise
    scored: bool = True

    @classmethod
    def from_name(cls, name: str) -> dict[str, Any]:
        """``tasks: [code, countdown]`` is short for ``[{name: code}, {name: countdown}]``."""
        return {"name": name}


@dataclass
class TinyModelConfig:
    """The embedded tiny model: a Qwen2-architecture causal LM with a character tokenizer."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    warmstart_steps: int = 300  # supervised steps on task demonstrations
    warmstart_batch: int = 64  # sequences per warm-start step
    warmstart_lr: float = 3e-3
    warmstart_seed: int = 1234


@dataclass
class LoraConfig:
    """LoRA adapters through peft (the 'lora' extra); r = 0 trains every parameter."""

    r: int = 0  # adapter rank; 0: no adapters (full fine-tuning)
    alpha: float = 32.0  # scaling alpha / r
    dropout: float = 0.0  # on the adapters' input (> 0 makes recomputed log-probs random)
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
        ]
    )  # fmt: skip


@dataclass
class ModelConfig:
    name_or_path: str = "tiny"  # "tiny" (embedded, built and cached), a hub id or a local path
    dtype: Literal["float32", "bfloat16", "float16", "float64", "auto"] = "float32"
    chat_template: Literal["auto", "never"] = "auto"  # auto: apply it when the tokenizer has one
    gradient_checkpointing: bool = False
    max_prompt_tokens: int = 512  # prompts are left-truncated to this many tokens
    cache_dir: str | None = None  # where the tiny model is cached (default ~/.cache/taskgrad)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class RolloutConfig:
    # sampling engine: transformers generate on the trainer's model, or a colocated vLLM engine
    # (the 'vllm' extra) that gets the weights after every optimizer step (engines/)
    backend: Literal["transformers", "vllm"] = "transformers"
    # how completions (rollouts, evaluation, probes) are seeded: "batch" (one stream per call,
    # transformers only), "prompt" (each prompt's own stream from its id, so any sharding of the
    # prompts over processes samples the same tokens); null = batch in one process, prompt under
    # data parallelism. vLLM always seeds per prompt.
    seeding: Literal["batch", "prompt"] | None = None
    # options of the vLLM engine (engines/vllm.py), e.g. {gpu_memory_utilization: 0.3,
    # enable_sleep_mode: true, kv_cache_gib: 4, max_model_len: 2048}
    vllm: dict[str, Any] = field(default_factory=dict)
    group_size: int = 8  # G: completions per prompt
    prompts_per_task: int = 8  # prompts of each task per step, before mixture weights
    max_new_tokens: int = 12  # completion length limit, in tokens
    temperature: float = 1.0
    top_p: float = 1.0
    generation_batch: int = 256  # sequences generated at once


@dataclass
class GRPOConfig:
    scale_rewards: bool = True  # divide advantages by the group std (False: Dr. GRPO)
    # the group std: population (divide by G, this project's default) or sample (G - 1, Bessel's
    # correction, as TRL and verl compute it)
    reward_std: Literal["population", "sample"] = "population"
    loss_agg: Literal["token_mean", "seq_mean", "constant"] = "token_mean"
    loss_constant: int | None = None  # normaliser of loss_agg=constant; default max_new_tokens
    clip_eps: float = 0.2  # PPO clip range (low)
    clip_eps_high: float | None = None  # upper clip range (DAPO clip-higher); default clip_eps
    # verl's dual clip: for negative advantages the ratio's loss is capped at dual_clip * |A|
    # (> 1; verl uses 3.0); None disables it. Matters with several inner updates.
    dual_clip: float | None = None
    inner_updates: int = 1  # optimizer steps per rollout batch (PPO epochs)
    kl_coef: float = 0.0  # beta of the k3 KL penalty to the reference (initial) policy
    micro_batch_size: int = 64  # sequences per forward/backward
    # truncated importance sampling against the rollout engine (TIS): each token's surrogate is
    # multiplied by min(pi_old / mu, cap), mu the engine's probability; null: no correction.
    # Needs an engine that reports log-probs (rollout.backend=vllm). engines/mismatch.py
    rollout_is_cap: float | None = None


@dataclass
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0 disables clipping
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    # A step whose loss, gradient or parameters are not finite is skipped (no update); this many
    # skipped in a row stop the run with an error (see taskgrad/numerics.py).
    max_skipped_steps: int = 3


@dataclass
class EvalConfig:
    # held-out evaluation: null = at the start, the middle and the end; N = every N steps (and at
    # start and end); 0 = never
    every: int | None = None
    # held-out prompts per task, one fixed set for every seed; a task whose prompt space is small
    # holds out at most half of it (tasks/base.py)
    size: int = 512
    # which held-out set: "test" (what comparisons are scored on) or "tune", a disjoint one that
    # tuning runs use, so that a tuned baseline never sees the test prompts
    split: Literal["test", "tune"] = "test"
    max_new_tokens: int | None = None  # default: rollout.max_new_tokens
    # completions per held-out prompt: 0 = one greedy completion (accuracy = share correct);
    # k in 1..9 = k sampled at the rollout temperature and top_p with a fixed seed, the same in
    # every run and evaluation (accuracy = mean over prompts of the share of k correct, avg@k:
    # what GRPO optimises, and less noisy per prompt)
    samples: int = 4


@dataclass
class DiagnosticsConfig:
    """Per-task gradient measurements inside the step (see gradients.py)."""

    enabled: bool = True
    every: int = 1  # measure every N steps (other steps run without group buffers)
    scope: str = "full"  # where group buffers live: full | proxy | a regex over parameter names
    breakdown: bool = True  # also per layer and per module kind, from the same buffers
    optimizer_geometry: bool = True  # shares of the applied AdamW update per task
    gain_window: int = 10  # s of the paper's windowed learning gain, in steps
    # steps per window of the noise-aware estimators: strategies read window means (TaskWindow)
    # and reports aggregate per-step estimates over windows before any ratio (analysis/windows.py)
    window: int = 10
    # AdamW's first moment split by task (applied_share; K extra buffers of the scope's size):
    # null = on when every step is measured (every=1), true = on (needs every=1), false = off
    task_momentum: bool | None = None
    # every N steps (0: never), also measure the gradients on a dedicated, larger batch of
    # measure_prompts prompts per task (no update); logged under the scope measure_<scope>
    measure_every: int = 0
    measure_prompts: int = 32
    probe_every: int = 10  # paired probe evaluation every N steps; 0 disables
    probe_size: int = 32  # probe prompts per task (the first ones of its held-out set)
    probe_samples: int = 4  # sampled completions per probe prompt, with fixed seeds
    one_step_at: list[int] = field(default_factory=list)  # steps with a one-step probe gain
    transfer_at: list[int] = field(default_factory=list)  # steps with a K x K transfer matrix

    def momentum_on(self) -> bool:
        """Whether the per-task AdamW moments are kept (see task_momentum)."""
        if self.task_momentum is None:
            return self.enabled and self.every == 1
        return self.task_momentum


@dataclass
class BalanceConfig:
    """Gradient-level correction between tasks (taskgrad/balancing)."""

    strategy: str = "uniform"  # registered, or package.module:Class; uniform is plain GRPO
    options: dict[str, Any] = field(default_factory=dict)  # the strategy's Options fields


@dataclass
class ParallelConfig:
    """Data parallelism across the processes of a launch (taskgrad train --nproc N, torchrun or
    accelerate launch); one process ignores it. taskgrad/distributed.py."""

    # ddp: parameters replicated, group buffers all-reduced once per step; fsdp2: parameters,
    # gradients, optimizer state and group buffers sharded (torch fully_shard per decoder layer)
    mode: Literal["ddp", "fsdp2", "deepspeed"] = "ddp"


@dataclass
class Config:
    seed: int = 0
    steps: int = 100  # training steps (rollout batches)
    # The testbed's natural mix (README, "A testbed where balancing can matter"): the paper's
    # Code and Countdown, and table QA for FinQA, sized so that on the embedded tiny model each
    # task starts between 20% and 75% held-out accuracy; code and countdown each gain >= 10
    # points within the 100 steps when trained alone, table QA does not (stage 0 measures it).
    tasks: list[TaskSpec] = field(
        default_factory=lambda: [
            TaskSpec("code", options={"num_ops": 3}),
            TaskSpec("countdown", options={"num_numbers": 2, "max_number": 15}),
            TaskSpec(
                "table_qa",
                options={"max_value": 9, "questions": ["add", "sub", "max", "min"]},
            ),
        ]
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    runs_root: str = "runs"  # run directories are created under it
    run_name: str | None = None  # default: <time>-<preset>-s<seed>
    checkpoint_every: int = 25  # steps between checkpoints (the last step always saves)
    # also checkpoint once this many minutes passed since the last checkpoint (0: steps only), so
    # that slow steps never put more than this much work at risk
    checkpoint_minutes: float = 10.0
    keep_checkpoints: int = 1  # how many recent checkpoints to keep
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True  # show a progress bar
    preset: str = "default"  # the preset this config was resolved from (informational)


# --- presets ---------------------------------------------------------------------------------


def preset_names() -> list[str]:
    files = resources.files("taskgrad.presets").iterdir()
    return sorted(p.name[: -len(".yaml")] for p in files if p.name.endswith(".yaml"))


def yaml_problem(e: yaml.YAMLError) -> str:
    """``"LINE:COL: invalid YAML: <problem>"`` (1-based) for a YAML error, on one line."""
    mark = getattr(e, "problem_mark", None)
    where = f"{mark.line + 1}:{mark.column + 1}: " if mark is not None else " "
    problem = getattr(e, "problem", None) or str(e)
    return f"{where}invalid YAML: {' '.join(str(problem).split())}"


def _preset_dict(name: str) -> dict[str, Any]:
    path = Path(name)
    if path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise ConfigError(f"preset: {name}: no such file")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"preset: {name}: cannot read it ({e})") from None
    elif name in preset_names():
        text = resources.files("taskgrad.presets").joinpath(f"{name}.yaml").read_text()
    else:
        raise ConfigError(f"preset: unknown preset {name!r}; valid: {', '.join(preset_names())}")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}:{yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset {name!r}: the top level must be a mapping")
    return data


# --- overrides -------------------------------------------------------------------------------


class _NotYAML(str):
    """An override value that YAML could not parse, kept as the string it is."""

    problem = ""


# Shorthands accepted on the command line: `model=Qwen/...` sets model.name_or_path and
# `tasks=a,b` sets the task list by names.
_ALIASES = {"model": "model.name_or_path"}


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "tasks=arithmetic,code"]`` -> a nested dict of YAML-typed values."""
    out: dict[str, Any] = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"override {arg!r}: expected key=value")
        key, raw = arg.split("=", 1)
        key = _ALIASES.get(key.strip(), key.strip())
        value: Any
        if key == "tasks" and not raw.strip().startswith("["):
            value = [{"name": n.strip()} for n in raw.split(",") if n.strip()]
        else:
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError as e:
                # Kept as a string (a regex like "[qk]_proj" is not YAML, and need not be); if
                # the field wanted a list or mapping, load_config's error quotes the YAML problem.
                value = _NotYAML(raw)
                value.problem = yaml_problem(e)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {arg!r}: {part!r} is set twice")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "options":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def validate(cfg: Config) -> Config:
    """Checks that span fields: positive sizes, known tasks, unique task names."""
    from taskgrad.tasks import TASKS

    positive = {
        "steps": cfg.steps,
        "rollout.group_size": cfg.rollout.group_size,
        "rollout.prompts_per_task": cfg.rollout.prompts_per_task,
        "rollout.max_new_tokens": cfg.rollout.max_new_tokens,
        "rollout.generation_batch": cfg.rollout.generation_batch,
        "grpo.inner_updates": cfg.grpo.inner_updates,
        "grpo.micro_batch_size": cfg.grpo.micro_batch_size,
        "optim.lr": cfg.optim.lr,
        "eval.size": cfg.eval.size,
        "checkpoint_every": cfg.checkpoint_every,
        "keep_checkpoints": cfg.keep_checkpoints,
        "rollout.temperature": cfg.rollout.temperature,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name}: must be positive, got {value!r}")
    if cfg.rollout.group_size < 2:
        raise ConfigError("rollout.group_size: GRPO needs at least 2 completions per prompt")
    if not 0 < cfg.rollout.top_p <= 1:
        raise ConfigError(f"rollout.top_p: must be in (0, 1], got {cfg.rollout.top_p!r}")
    if not cfg.tasks:
        raise ConfigError("tasks: at least one task is needed")
    need(any(t.scored for t in cfg.tasks), "tasks", "at least one scored task")
    names = [t.name for t in cfg.tasks]
    for i, spec in enumerate(cfg.tasks):
        if names.count(spec.name) > 1:
            raise ConfigError(f"tasks[{i}].name: task name {spec.name!r} is used twice")
        if spec.weight <= 0:
            raise ConfigError(f"tasks[{i}].weight: must be positive, got {spec.weight!r}")
        need(spec.loss_scale > 0, f"tasks[{i}].loss_scale", f"> 0, got {spec.loss_scale!r}")
        _plugin_options(TASKS, spec.type or spec.name, spec.options, f"tasks[{i}]")
    if cfg.diagnostics.every <= 0:
        raise ConfigError(f"diagnostics.every: must be positive, got {cfg.diagnostics.every!r}")
    from taskgrad.balancing import STRATEGIES

    _plugin_options(
        STRATEGIES, cfg.balance.strategy, cfg.balance.options, "balance", num_tasks=len(cfg.tasks)
    )
    if cfg.balance.strategy != "uniform":
        d = cfg.diagnostics
        if not d.enabled or d.every != 1 or d.scope != "full":
            raise ConfigError(
                "balance.strategy: a balancing strategy needs the group gradients of every step: "
                "diagnostics.enabled=true, diagnostics.every=1, diagnostics.scope=full"
            )
    d = cfg.diagnostics
    need(d.window >= 2, "diagnostics.window", f"at least 2 steps, got {d.window}")
    need(
        d.task_momentum is not True or (d.enabled and d.every == 1),
        "diagnostics.task_momentum",
        "diagnostics.enabled=true and diagnostics.every=1 (every update must be captured)",
    )
    need(d.measure_every >= 0, "diagnostics.measure_every", f">= 0, got {d.measure_every}")
    need(d.measure_prompts >= 2, "diagnostics.measure_prompts", f">= 2, got {d.measure_prompts}")
    need(
        cfg.grpo.dual_clip is None or cfg.grpo.dual_clip > 1,
        "grpo.dual_clip",
        f"a number > 1 or null, got {cfg.grpo.dual_clip!r}",
    )
    need(0 <= cfg.eval.samples <= 9, "eval.samples", f"0..9, got {cfg.eval.samples!r}")
    if cfg.eval.every is not None and cfg.eval.every < 0:
        raise ConfigError(f"eval.every: must be >= 0 or null, got {cfg.eval.every!r}")
    _check_ranges(cfg)
    validate_scale(cfg)
    return cfg


def _floats(node: Any, where: str = "") -> list[tuple[str, float]]:
    """Every float of the config tree with its dotted name (plug-in options excluded: their own
    ``check`` validates them)."""
    if dataclasses.is_dataclass(node):
        out = []
        for f in dataclasses.fields(node):
            if f.name != "options":
                out += _floats(getattr(node, f.name), f"{where}{f.name}.")
        return out
    if isinstance(node, list | tuple):
        return [x for i, v in enumerate(node) for x in _floats(v, f"{where[:-1]}[{i}].")]
    return [(where[:-1], node)] if isinstance(node, float) else []


def _check_ranges(cfg: Config) -> None:
    """Values a run would accept and then misbehave on: NaN/inf, negative clip ranges, betas
    outside [0, 1), a warmup as long as the run, empty probes, an invalid scope regex."""
    for name, value in _floats(cfg):
        need(math.isfinite(value), name, f"a finite number, got {value!r}")
    g, o, d, m = cfg.grpo, cfg.optim, cfg.diagnostics, cfg.model
    need(g.clip_eps > 0, "grpo.clip_eps", f"a number > 0, got {g.clip_eps!r}")
    need(
        g.clip_eps_high is None or g.clip_eps_high > 0,
        "grpo.clip_eps_high",
        f"a number > 0 or null, got {g.clip_eps_high!r}",
    )
    need(g.kl_coef >= 0, "grpo.kl_coef", f"a number >= 0, got {g.kl_coef!r}")
    need(
        g.loss_constant is None or g.loss_constant > 0,
        "grpo.loss_constant",
        f"a positive integer or null, got {g.loss_constant!r}",
    )
    need(o.weight_decay >= 0, "optim.weight_decay", f"a number >= 0, got {o.weight_decay!r}")
    for i, beta in enumerate(o.betas):
        need(0 <= beta < 1, f"optim.betas[{i}]", f"a number in [0, 1), got {beta!r}")
    need(o.eps > 0, "optim.eps", f"a number > 0, got {o.eps!r}")
    need(
        o.max_grad_norm >= 0,
        "optim.max_grad_norm",
        f">= 0 (0: no clipping), got {o.max_grad_norm!r}",
    )
    need(
        0 <= o.warmup_steps < cfg.steps or o.warmup_steps == 0,
        "optim.warmup_steps",
        f"0 <= warmup_steps < steps ({cfg.steps}), got {o.warmup_steps!r}",
    )
    need(o.max_skipped_steps >= 1, "optim.max_skipped_steps", f">= 1, got {o.max_skipped_steps!r}")
    need(
        cfg.eval.max_new_tokens is None or cfg.eval.max_new_tokens > 0,
        "eval.max_new_tokens",
        f"a positive integer or null, got {cfg.eval.max_new_tokens!r}",
    )
    need(d.gain_window >= 0, "diagnostics.gain_window", f">= 0 steps, got {d.gain_window!r}")
    need(d.probe_every >= 0, "diagnostics.probe_every", f">= 0, got {d.probe_every!r}")
    need(d.probe_size >= 1, "diagnostics.probe_size", f">= 1 prompt, got {d.probe_size!r}")
    need(d.probe_samples >= 1, "diagnostics.probe_samples", f">= 1, got {d.probe_samples!r}")
    for key in ("one_step_at", "transfer_at"):
        bad = [s for s in getattr(d, key) if s < 1]
        need(not bad, f"diagnostics.{key}", f"training steps (>= 1), got {bad[0] if bad else ''}")
    if d.scope not in ("full", "proxy"):
        try:
            re.compile(d.scope)
        except re.error as e:
            raise ConfigError(f"diagnostics.scope: invalid regex {d.scope!r}: {e}") from None
    need(m.max_prompt_tokens > 0, "model.max_prompt_tokens", f"> 0, got {m.max_prompt_tokens!r}")
    t = m.tiny
    for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
        need(getattr(t, name) > 0, f"model.tiny.{name}", f"> 0, got {getattr(t, name)!r}")
    need(t.hidden_size % t.num_heads == 0, "model.tiny.hidden_size", "a multiple of num_heads")
    need(t.num_heads % t.num_kv_heads == 0, "model.tiny.num_heads", "a multiple of num_kv_heads")
    need(t.warmstart_steps >= 0, "model.tiny.warmstart_steps", ">= 0")
    need(t.warmstart_batch > 0 and t.warmstart_lr > 0, "model.tiny.warmstart_batch", "> 0 (lr too)")
    need(0 <= cfg.seed < 2**32, "seed", f"an integer in [0, 2**32), got {cfg.seed!r}")
    need(
        cfg.checkpoint_minutes >= 0,
        "checkpoint_minutes",
        f">= 0 (0: by steps only), got {cfg.checkpoint_minutes!r}",
    )
    need(bool(str(cfg.runs_root).strip()), "runs_root", "a directory path")


def validate_scale(cfg: Config) -> None:
    """Engines, adapters and data parallelism (issue 12): the checks that need no launch."""
    cap = cfg.grpo.rollout_is_cap
    need(cap is None or cap > 0, "grpo.rollout_is_cap", f"a positive number or null, got {cap!r}")
    need(
        cap is None or cfg.rollout.backend != "transformers",
        "grpo.rollout_is_cap",
        "rollout.backend=vllm, an engine that reports its log-probs (transformers generate "
        "samples from the trainer's own forward pass: there is nothing to correct)",
    )
    need(
        cfg.rollout.seeding != "batch" or cfg.rollout.backend == "transformers",
        "rollout.seeding",
        "rollout.backend=transformers ('batch' is one generate stream; vLLM seeds each prompt)",
    )
    lora = cfg.model.lora
    need(lora.r >= 0, "model.lora.r", f">= 0 (0: no adapters), got {lora.r}")
    need(lora.alpha > 0, "model.lora.alpha", f"a positive number, got {lora.alpha!r}")
    need(0 <= lora.dropout < 1, "model.lora.dropout", f"in [0, 1), got {lora.dropout!r}")
    need(
        lora.r == 0 or bool(lora.target_modules),
        "model.lora.target_modules",
        "at least one module name",
    )


def _plugin_options(registry, name: str, options: dict, where: str, **context) -> Any:
    """The plug-in's validated Options; unknown plug-ins and bad options are one-line errors."""
    from taskgrad.registry import parse_options

    kind = "type" if where.startswith("tasks[") else "strategy"
    try:
        cls = registry.get(name)
    except KeyError as e:
        raise ConfigError(f"{where}.{kind}: {e.args[0]}") from None
    return parse_options(cls, options, f"{where}.options", **context)


def load_config(preset: str | None = None, overrides: list[str] | None = None) -> Config:
    """Resolve defaults <- preset <- overrides into a validated ``Config``."""
    over = parse_overrides(overrides or [])
    preset = over.pop("preset", None) or preset or "default"
    data = _merge(_preset_dict(str(preset)), over)
    data["preset"] = str(preset)
    try:
        return validate(from_dict(Config, data))
    except ConfigError as e:
        for key, value in _leaves(over):
            if isinstance(value, _NotYAML) and str(e).startswith(key):
                raise ConfigError(f"{e} (override {key}:{value.problem})") from None
        raise


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out
