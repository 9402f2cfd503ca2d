"""A TRL run as a taskgrad run directory: the resolved config that describes it, and its tasks.

``taskgrad report`` reads a run directory's ``config.yaml`` and ``metrics.jsonl`` only
(analysis/runs.py), so a TRL run writes both: the metrics under taskgrad's schema (metrics.py),
and a valid ``Config`` (it passes ``config.validate``) that says what TRL ran as closely as the
schema allows. Nothing in this module imports TRL. What maps to what:

| taskgrad config            | from TRL                                                          |
|----------------------------|-------------------------------------------------------------------|
| tasks[k]                   | the values of the task column; type ``TRLTask`` (below), options: |
|                            | the column, the value, n_k; weight n_k / mean n                   |
| steps                      | generation batches (optimizer steps / num_iterations)             |
| rollout.group_size         | num_generations                                                   |
| rollout.prompts_per_task   | mean n_k per generation batch (rounded when the n_k differ)       |
| rollout.max_new_tokens     | max_completion_length                                             |
| rollout.temperature, top_p | temperature, top_p (generation backend: versions.json)            |
| rollout.generation_batch   | generation_batch_size                                             |
| grpo.loss_agg, loss_constant | loss_type via trl_batch.LOSS_TYPES (the same token weights)     |
| grpo.scale_rewards         | scale_rewards != "none" ("batch" scales by the batch std: nearest) |
| grpo.reward_std            | "sample": TRL's std has Bessel's correction                       |
| grpo.clip_eps, clip_eps_high, dual_clip | epsilon, epsilon_high, delta                         |
| grpo.inner_updates         | num_iterations                                                    |
| grpo.kl_coef               | beta                                                              |
| grpo.micro_batch_size      | per_device_train_batch_size                                       |
| optim.*                    | learning_rate, weight_decay, adam_beta1/2, adam_epsilon,          |
|                            | max_grad_norm, lr_scheduler_type (nearest), warmup steps          |
| diagnostics, balance       | the integration's own settings                                    |
| preset                     | ``trl-<loss_type>``: tells runs of different TRL loss types apart |
|                            | (sapo and grpo share seq_mean; reports group runs by config)      |
| eval.every = 0             | TRL's loop has no taskgrad held-out evaluation                    |

The full ``GRPOConfig``, TRL's version and the generation backend go to ``versions.json``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from taskgrad.config import (
    BalanceConfig,
    Config,
    DiagnosticsConfig,
    EvalConfig,
    GRPOConfig,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    TaskSpec,
    validate,
)
from taskgrad.integrations.trl_batch import LOSS_TYPES, BatchPlan, loss_constant
from taskgrad.rundir import RunDir
from taskgrad.tasks.base import Reward, Sample, Task

TASK_TYPE = "taskgrad.integrations.trl_run:TRLTask"


class TRLTask(Task):
    """A task of a TRL run: the dataset rows whose ``column`` holds ``value``.

    It names the task in a TRL run's config.yaml; its prompts and rewards live in the user's TRL
    dataset and reward functions, so taskgrad's own loop cannot train it.
    """

    name = "trl"

    @dataclass
    class Options:
        column: str = "task"  # the dataset column that names each row's task
        value: str = ""  # this task's value in it
        prompts_per_batch: int = 0  # n_k: its prompts in every generation batch

    def __init__(self, *args: Any, name: str | None = None, **kwargs: Any) -> None:
        # build_tasks comes before a run creates anything (trainer.setup): stop there, one line
        raise ValueError(
            f"task {name or self.name!r} comes from a TRL dataset: train it with "
            "taskgrad.integrations.trl (docs/trl.md); taskgrad report reads its run directory"
        )

    def generate(self, rng: random.Random) -> Sample:  # pragma: no cover - never built
        raise NotImplementedError

    def reward(self, sample: Sample, completion: str) -> Reward:  # pragma: no cover
        raise NotImplementedError


_SCHEDULES = {"linear": "linear", "cosine": "cosine", "cosine_with_min_lr": "cosine"}


def _schedule(scheduler: Any) -> str:
    """taskgrad's schedule nearest TRL's ``lr_scheduler_type`` (the exact one: versions.json)."""
    name = str(getattr(scheduler, "value", scheduler))  # an enum in TrainingArguments
    return _SCHEDULES.get(name, "linear" if "linear" in name else "constant")


def dtype_name(model: torch.nn.Module) -> str:
    dtype = next(model.parameters()).dtype
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    return names.get(dtype, "auto")


def trl_config(
    args: Any,
    plan: BatchPlan,
    *,
    task_column: str,
    model_name: str,
    dtype: str,
    steps: int,
    max_steps: int,
    balance: BalanceConfig,
    diagnostics: DiagnosticsConfig,
    run_dir: Path,
) -> Config:
    """The validated taskgrad ``Config`` of a TRL run (``args``: its ``GRPOConfig``).

    ``steps``: generation batches; ``max_steps``: optimizer steps (for the warm-up). Raises
    ``ConfigError`` (one line) for bad strategy options and the like.
    """
    mean_n = sum(plan.prompts_per_task) / plan.num_tasks
    tasks = [
        TaskSpec(
            name, TASK_TYPE, weight=n / mean_n,
            options={"column": task_column, "value": name, "prompts_per_batch": n},
        )
        for name, n in zip(plan.tasks, plan.prompts_per_task, strict=True)
    ]  # fmt: skip
    loss = LOSS_TYPES[args.loss_type]
    cfg = Config(
        seed=args.seed,
        steps=max(1, steps),
        tasks=tasks,
        model=ModelConfig(name_or_path=model_name, dtype=dtype),  # type: ignore[arg-type]
        rollout=RolloutConfig(
            group_size=args.num_generations,
            prompts_per_task=max(1, round(mean_n)),
            max_new_tokens=args.max_completion_length,
            temperature=args.temperature,
            top_p=args.top_p,
            generation_batch=args.generation_batch_size,
        ),
        grpo=GRPOConfig(
            scale_rewards=args.scale_rewards != "none",
            reward_std="sample",
            loss_agg=loss.loss_agg,  # type: ignore[arg-type]
            loss_constant=loss_constant(args.loss_type, args.max_completion_length),
            clip_eps=args.epsilon,
            clip_eps_high=args.epsilon_high,
            dual_clip=args.delta,
            inner_updates=args.num_iterations,
            kl_coef=args.beta,
            micro_batch_size=args.per_device_train_batch_size,
        ),
        optim=OptimConfig(
            lr=args.learning_rate,
            weight_decay=args.weight_decay,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            max_grad_norm=args.max_grad_norm,
            schedule=_schedule(args.lr_scheduler_type),  # type: ignore[arg-type]
            warmup_steps=args.get_warmup_steps(max_steps) if max_steps > 0 else 0,
        ),
        eval=EvalConfig(every=0),
        diagnostics=diagnostics,
        balance=balance,
        runs_root=str(run_dir.parent),
        run_name=run_dir.name,
        keep_checkpoints=max(1, args.save_total_limit or 1),
        device="cpu" if str(args.device).startswith("cpu") else "cuda",
        progress=False,
        preset=f"trl-{args.loss_type}",
    )
    return validate(cfg)


def trl_versions(args: Any, model_name: str) -> dict[str, Any]:
    """What versions.json adds for a TRL run: TRL's version, its full config, the backend."""
    import trl

    return {
        "trl": trl.__version__,
        "model": model_name,
        "generation": "vllm" if args.use_vllm else "transformers",
        "trl_config": json.loads(args.to_json_string()),
    }


def open_run(cfg: Config, path: Path, resume_step: int | None) -> tuple[RunDir, list[dict]]:
    """Create the run directory, or continue it when TRL resumes from a checkpoint.

    ``resume_step``: the last taskgrad step the resumed checkpoint holds (None: a fresh run).
    Returns the run and the metric records it keeps (the history of a resumed run).
    """
    if resume_step is not None and (path / "metrics.jsonl").exists():
        run = RunDir(path)
        return run, run.truncate_metrics(resume_step)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(
            f"taskgrad run directory {path} is not empty: pass run_dir= or remove it "
            "(resuming TRL from a checkpoint continues it)"
        )
    return RunDir.create(cfg, path), []
