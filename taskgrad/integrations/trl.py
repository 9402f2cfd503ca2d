"""taskgrad inside TRL's ``GRPOTrainer``: per-task gradients from the backward passes TRL runs.

    from taskgrad.integrations.trl import TaskGradGRPOTrainer
    trainer = TaskGradGRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...),
                                  train_dataset=dataset, task_column="task", strategy="uniform")

Written against TRL 1.16 (``pip install 'taskgrad[trl]'``); it overrides private methods of
``GRPOTrainer``, so other TRL versions are refused at import. docs/trl.md is the user's guide.

**Design.** Every gradient-accumulation micro-batch is one (task, half) group, so TRL's own
backward passes give the group gradients: no extra forward or backward. The hooks, in the order a
step meets them (file:line: TRL 1.16 / transformers 5.24 as installed):

- ``_get_train_sampler``: ``trl_batch.TaskStratifiedRepeatSampler``, n_k prompts of every task
  per generation batch, halves split by prompt, each process's slice in group order.
- ``_calculate_rewards``: unchanged, but keeps the gathered rewards for per-task statistics.
- ``_prepare_inputs`` (training only; TRL's at grpo_trainer.py:1522): generates and scores as TRL
  does, then draws TRL's shuffle permutation from the global RNG (``shuffle_sequence_dict``,
  utils.py:1110), so every later sample is the one plain TRL would draw, but sorts the rows by
  group instead and cuts them into TRL's equal micro-batches. The shares s_kh come from the loss
  type (trl_batch.LOSS_TYPES); bnpo's advantages are re-weighted there.
- ``training_step``: after each micro-batch's backward it reads TRL's per-micro-batch metrics
  (entropy, clip ratio, KL: per task, since the micro-batch is task-pure); after a group's last
  micro-batch the group's gradient moves into the buffer (``GroupGradients.close_group``); after
  the window's last micro-batch it runs ``taskgrad.train.balance``, the same function taskgrad's
  own loop runs: Gram -> strategy -> ``.grad = sum_k w_k G_k`` (uniform: the plain sum).
- ``_get_grad_norm``: keeps the pre-clip norm Trainer computed, for ``train/grad_norm``.
- ``train``: notes the checkpoint a resume starts from; the strategy's state and the window
  statistics saved beside TRL's in every checkpoint (``on_save``) are restored from it.
- a callback: the run directory at ``on_train_begin``; at ``on_optimizer_step`` (after AdamW's
  step, before the scheduler's) the gradient diagnostics, AdamW geometry and the step's record,
  written to ``metrics.jsonl`` and appended to TRL's metrics, so its ``log`` sends them to W&B,
  trackio or TensorBoard; ``summary.json`` at ``on_train_end``.

**Why not callbacks alone.** Trainer clips right after the last micro-batch's ``training_step``
(transformers trainer.py:1938) and the first callback after it, ``on_pre_optimizer_step``, comes
later (:1942), so the weighted sum must be in ``.grad`` when ``training_step`` returns. Callbacks
also never see TRL's buffer index or the generation batch.

**One step is one generation batch** (taskgrad's step; ``num_iterations`` is its
``grpo.inner_updates``): the first, on-policy update is the one measured and recorded; a
balancing strategy re-balances every update.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

try:
    import trl
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
    from trl import GRPOTrainer
    from trl.trainer.utils import split_tensor_dict
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(
        f"taskgrad.integrations.trl needs TRL ({e.name} is missing): pip install 'taskgrad[trl]'"
    ) from None

from taskgrad import metrics as M
from taskgrad.balancing import STRATEGIES, Strategy
from taskgrad.balancing.base import TaskWindow
from taskgrad.config import BalanceConfig, Config, DiagnosticsConfig
from taskgrad.diagnostics.gain import window_gains
from taskgrad.diagnostics.gradient import (
    BalancedStep,
    adam_metrics,
    gradient_metrics,
    preconditioner,
)
from taskgrad.gradients import GroupGradients
from taskgrad.integrations import trl_batch as TB
from taskgrad.integrations.trl_run import dtype_name, open_run, trl_config, trl_versions
from taskgrad.registry import parse_options
from taskgrad.rundir import RunDir
from taskgrad.train import balance, balance_metrics
from taskgrad.trainer import check_buffer_fits

SUPPORTED_TRL = ("1.16.",)  # the hooks read private GRPOTrainer methods; checked here only
if not trl.__version__.startswith(SUPPORTED_TRL):
    raise ImportError(
        f"taskgrad.integrations.trl supports TRL 1.16.x, found {trl.__version__}: "
        "pip install 'taskgrad[trl]'"
    )

log = logging.getLogger(__name__)
STATE_FILE = "taskgrad_state.pt"  # in each TRL checkpoint: the strategy's state and windows

# TRL's per-micro-batch metrics (``GRPOTrainer._compute_loss``) -> taskgrad task statistics.
MICRO_METRICS = {
    "entropy": "entropy",
    "clip_ratio/region_mean": "clip_frac",  # grpo, bnpo, dr_grpo, dapo, luspo
    "cispo_clip_ratio": "clip_frac",  # cispo
    "kl": "kl",  # beta != 0
}
# What goes to TRL's own log too: these families, and of grad/ only the buffers' own scope and
# the proxy (the per-layer and per-module breakdown stays in metrics.jsonl). TRL logs its own
# loss, grad_norm, learning rate and step time.
TRL_LOG_FAMILIES = ("task", "balance", "gain")
TRL_LOG_SCOPES = ("full", "proxy", "custom", "proxy_agreement")


class UnsupportedSetting(ValueError):
    """A TRL setting the integration cannot decompose exactly; the message names it."""


# --- the group buffers ---------------------------------------------------------------------------


class GroupCaptures(GroupGradients):
    """``GroupGradients`` with cheaper captures between TRL's micro-batches; same buffer rows.

    A group's first capture in a window copies ``.grad`` into its row instead of adding it to a
    zeroed row, so a window starts without zeroing the [2K, P] buffer; and ``.grad`` is zeroed in
    place instead of freed, so the next micro-batch's backward accumulates into the tensors it
    has (plain TRL re-allocates gradients once per optimizer step, not once per micro-batch).
    """

    def reset(self) -> None:
        self.present.zero_()  # rows are overwritten by their first capture

    def close_group(self, group: int) -> None:
        row, first = self.buffer[group], not bool(self.present[group])
        for (_, p), lo, hi in zip(self.params, self.offsets[:-1], self.offsets[1:], strict=True):
            if p.grad is None:
                if first:
                    row[lo:hi].zero_()
            elif first:
                row[lo:hi].copy_(p.grad.reshape(-1))
                p.grad.zero_()
            else:
                row[lo:hi].add_(p.grad.reshape(-1))
                p.grad.zero_()
        self.present[group] = True

    def restore_sum(self, weights: torch.Tensor | None = None) -> None:
        if not bool(self.present.all()):  # a group with no rows this window adds nothing
            self.buffer[~self.present.to(self.buffer.device)] = 0.0
        super().restore_sum(weights)


# --- records -------------------------------------------------------------------------------------


@dataclass
class LoopState:
    """What ``taskgrad.train.balance`` reads of taskgrad's Trainer, held for a TRL run."""

    cfg: Config
    task_names: list[str]
    strategy: Strategy
    groups: GroupGradients | None
    history: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    sampling: torch.Tensor | None = None  # set by sampling strategies, which are refused
    # the last diagnostics.window steps' task statistics (train.task_window); checkpointed with
    # the strategy's state in each TRL checkpoint (STATE_FILE)
    windows: dict[str, list[list[float]]] = field(default_factory=dict)


@dataclass
class Generation:
    """One generation batch as the integration laid it out (taskgrad's step)."""

    index: int  # taskgrad step, 1-based
    measured: bool  # group gradients are captured (diagnostics.every)
    micro_groups: list[int]  # group m of each micro-batch
    micro_tokens: list[float]  # loss-mask tokens of each micro-batch
    shares: torch.Tensor  # [K, 2] s_kh
    stats: dict[str, torch.Tensor]  # rollout statistics, name -> [K]
    reward: float  # mean reward of the batch
    seconds: float  # generate, score and lay out
    # this step's window statistics, made by its first balanced update (later ones reuse it)
    task_window: TaskWindow | None = None


@dataclass
class Window:
    """One optimizer step's accumulation window."""

    first: bool  # the generation batch's first (on-policy) update
    capture: bool
    sums: TB.MicroBatchSums
    started: float = field(default_factory=time.perf_counter)
    balanced: BalancedStep | None = None
    params_before: torch.Tensor | None = None  # in-scope parameters before AdamW's step
    grad_norm: float = math.nan
    balance_seconds: float = 0.0


# --- the trainer ---------------------------------------------------------------------------------


class TaskGradGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with task-pure, half-pure micro-batches, per-task diagnostics and balancing.

    Extra keyword arguments (everything else is ``GRPOTrainer``'s):

    - ``task_column``: the dataset column naming each row's task (it also reaches the reward
      functions as a keyword, as every dataset column does in TRL).
    - ``strategy``, ``strategy_options``: a registered balancing strategy (or
      ``package.module:Class``) and its options; ``uniform`` leaves TRL's update as it is.
    - ``scope``: the group buffers' parameters: ``full``, ``proxy`` (the last attention block) or
      a regex. A strategy other than uniform needs ``full``.
    - ``prompts_per_task``: {task: prompts per generation batch}; default an equal split.
    - ``run_dir``: the taskgrad run directory; default ``<output_dir>/taskgrad``.
    - ``diagnostics_every``, ``breakdown``, ``optimizer_geometry``, ``gain_window``: as
      ``diagnostics.every``, ``.breakdown``, ``.optimizer_geometry``, ``.gain_window``.
      ``optimizer_geometry`` (the AdamW-geometry shares) is off by default here, unlike in
      taskgrad's own loop: it doubles the Gram work (benchmarks/trl_overhead.py measures both).
    """

    def __init__(
        self,
        *args: Any,
        task_column: str = "task",
        strategy: str = "uniform",
        strategy_options: Mapping[str, Any] | None = None,
        scope: str = "full",
        prompts_per_task: Mapping[str, int] | None = None,
        run_dir: str | Path | None = None,
        diagnostics_every: int = 1,
        breakdown: bool = True,
        optimizer_geometry: bool = False,
        gain_window: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_supported(self, task_column)
        names, self.tg_task_of_row = dataset_tasks(self.train_dataset, task_column)
        self.tg_task_column = task_column
        self.tg_plan = TB.make_plan(
            names, prompts_per_task, generation_batch_size=self.args.generation_batch_size,
            group_size=self.num_generations, num_processes=self.accelerator.num_processes,
            micro_batch_rows=self.args.per_device_train_batch_size,
            gradient_accumulation_steps=self.args.gradient_accumulation_steps,
        )  # fmt: skip
        self.tg_run_path = Path(run_dir) if run_dir else Path(self.args.output_dir) / "taskgrad"
        self.tg_settings = {
            "balance": BalanceConfig(strategy, dict(strategy_options or {})),
            "diagnostics": DiagnosticsConfig(
                every=diagnostics_every, scope=scope, breakdown=breakdown,
                optimizer_geometry=optimizer_geometry, gain_window=gain_window, probe_every=0,
            ),
        }  # fmt: skip
        cfg = self._tg_config(steps=1, max_steps=max(self.args.max_steps, 0))  # validates
        unwrapped = self.accelerator.unwrap_model(self.model)
        check_buffer_fits(unwrapped, cfg, len(names), self.args.device, log.info)
        cls = STRATEGIES.get(strategy)
        if "objective_scale" in cls.reads:
            raise UnsupportedSetting(
                f"taskgrad + TRL: unsupported strategy={strategy!r}: it reads objective_scale "
                "(kappa_k, taskgrad.batch.objective_scale), which the integration does not derive "
                "for TRL's loss types"
            )
        options = parse_options(cls, cfg.balance.options, "balance.options", num_tasks=len(names))
        groups = GroupCaptures(unwrapped, scope, num_groups=2 * len(names))
        self.tg = LoopState(cfg, list(names), cls(len(names), options), groups)
        self.tg_run: RunDir | None = None
        self.tg_generation: Generation | None = None
        self.tg_window: Window | None = None
        self.tg_rewards: torch.Tensor | None = None  # [N] this generation batch's rewards
        self.add_callback(_Hooks(self))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        self.tg_resume_from = resume_from_checkpoint
        if resume_from_checkpoint is True:  # Trainer's own resolution of "the last one"
            from transformers.trainer_utils import get_last_checkpoint

            self.tg_resume_from = get_last_checkpoint(self.args.output_dir)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    @property
    def tg_balancing(self) -> bool:
        return self.tg.cfg.balance.strategy != "uniform"

    def _tg_config(self, steps: int, max_steps: int) -> Config:
        return trl_config(
            self.args, self.tg_plan, task_column=self.tg_task_column,
            model_name=model_name(self.accelerator.unwrap_model(self.model)),
            dtype=dtype_name(self.model), steps=steps, max_steps=max_steps,
            run_dir=self.tg_run_path, **self.tg_settings,
        )  # fmt: skip

    # -- sampler and rewards ---------------------------------------------------------------------
    def _get_train_sampler(self, dataset=None) -> TB.TaskStratifiedRepeatSampler:
        if dataset is not None and dataset is not self.train_dataset:
            _, task_of_row = dataset_tasks(dataset, self.tg_task_column, self.tg_plan.tasks)
        else:
            task_of_row = self.tg_task_of_row
        return TB.TaskStratifiedRepeatSampler(
            task_of_row, self.tg_plan,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset, seed=self.args.seed,
        )  # fmt: skip

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # TRL's own combination (grpo_trainer.py:2759): weighted nansum, NaN where all are NaN
        weights = self.reward_weights.to(per_func.device)
        rewards = (per_func * weights).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = torch.nan
        self.tg_rewards = rewards.detach().float().cpu()  # [N] over all processes
        return per_func

    # -- the generation batch, laid out by group -------------------------------------------------
    def _prepare_inputs(self, generation_batch):
        if not self.model.training:
            return super()._prepare_inputs(generation_batch)
        spg = self.args.steps_per_generation
        if self._step % (spg * self.num_iterations) == 0 or self._buffered_inputs is None:
            self._buffered_inputs = self._tg_layout(generation_batch)
        return self._buffered_inputs[self._step % spg]

    def _tg_layout(self, rows: list[dict]) -> list[dict]:
        """Generate and score like TRL, then micro-batches = groups instead of TRL's shuffle."""
        start, plan = time.perf_counter(), self.tg_plan
        ids = {name: k for k, name in enumerate(plan.tasks)}
        task_index = torch.tensor([ids[str(row[self.tg_task_column])] for row in rows])  # [n]
        batch = self._generate_and_score_completions(rows)
        # TRL's shuffle_sequence_dict draws this from the global RNG (trl/trainer/utils.py:1110);
        # drawing it too keeps every later sample equal to plain TRL's.
        plain_order = torch.randperm(len(rows))
        groups = TB.group_index(task_index.tolist(), plan)  # [n]
        order = torch.sort(groups, stable=True).indices  # [n] group-pure, then by position
        completion_mask = batch["completion_mask"].cpu()
        if "tool_mask" in batch:  # TRL's loss mask (grpo_trainer.py:3027)
            loss_mask = completion_mask * batch["tool_mask"].cpu()
        else:
            loss_mask = completion_mask
        shares = TB.shares(
            self.loss_type, loss_mask, groups, plan, self.max_completion_length, plain_order
        )  # [K, 2]
        n, rank = len(rows), self.accelerator.process_index
        rewards = self.tg_rewards[rank * n : (rank + 1) * n]  # [n] this process's rows
        stats = TB.rollout_statistics(
            task_index, rewards, batch["advantages"].cpu(), completion_mask,
            batch["prompt_mask"].cpu(), shares, plan.group_size,
        )  # fmt: skip
        laid_out = TB.permute(batch, order)
        if self.loss_type == "bnpo":  # exact only re-weighted to TRL's partition (trl_batch)
            scale = TB.bnpo_advantage_scale(loss_mask, plain_order, order, plan.micro_batch_rows)
            laid_out["advantages"] = laid_out["advantages"] * scale.to(batch["advantages"].device)
        spg = self.args.steps_per_generation
        index = self.state.global_step // self.num_iterations + 1
        for k, task in enumerate(plan.tasks):  # windowed gains and strategies read this
            if math.isfinite(stats["reward"][k]):
                self.tg.history[task].append(float(stats["reward"][k]))
        self.tg_generation = Generation(
            index=index, measured=(index - 1) % self.tg.cfg.diagnostics.every == 0,
            micro_groups=TB.micro_batch_groups(groups[order], spg),
            micro_tokens=loss_mask[order].sum(1).view(spg, -1).sum(1).tolist(),
            shares=shares, stats=stats, reward=float(rewards.nanmean()),
            seconds=time.perf_counter() - start,
        )  # fmt: skip
        return split_tensor_dict(laid_out, spg)

    # -- capture between micro-batches, balance before Trainer clips -----------------------------
    def training_step(self, model, inputs, num_items_in_batch):
        spg = self.args.steps_per_generation
        micro = self._step % spg  # the buffer index _prepare_inputs hands out
        before = {k: len(self._metrics["train"].get(k, ())) for k in MICRO_METRICS}
        # Trainer.training_step calls _prepare_inputs (generation) first, then the backward.
        loss = super().training_step(model, inputs, num_items_in_batch)
        if micro == 0:
            self._tg_open_window()
        gen, window = self.tg_generation, self.tg_window
        group = gen.micro_groups[micro]
        if window.first:
            means = {
                MICRO_METRICS[k]: self._metrics["train"][k][-1]
                for k, n in before.items()
                if len(self._metrics["train"].get(k, ())) == n + 1
            }
            window.sums.add(group // 2, float(loss), gen.micro_tokens[micro], means)
        if window.capture and (micro + 1 == spg or gen.micro_groups[micro + 1] != group):
            self.tg.groups.close_group(group)  # .grad -> buffer row m, .grad = 0
        if micro + 1 == spg:
            if not self.accelerator.sync_gradients:
                raise RuntimeError("taskgrad: the window's last micro-batch is not a sync step")
            if window.capture:
                self._tg_balance(window, gen)
        return loss

    def _tg_open_window(self) -> None:
        spg = self.args.steps_per_generation
        if self.current_gradient_accumulation_steps != spg:
            raise UnsupportedSetting(
                f"taskgrad: a window of {self.current_gradient_accumulation_steps} micro-batches "
                f"(not {spg}) would drop groups: the epoch's steps must be whole generation batches"
            )
        first = (self._step // spg) % self.num_iterations == 0
        gen = self.tg_generation
        capture = gen.measured and (first or self.tg_balancing)
        if capture:
            self.tg.groups.reset()  # .grad holds only this micro-batch's gradient (zero_grad)
        sums = TB.MicroBatchSums(self.tg_plan.num_tasks)
        self.tg_window = Window(first=first, capture=capture, sums=sums)

    def _tg_balance(self, window: Window, gen: Generation) -> None:
        """Gram -> strategy -> ``.grad`` = the weighted sum of the groups (taskgrad.train)."""
        start = time.perf_counter()
        balanced, gen.task_window = balance(self.tg, gen, gen.stats, gen.index, gen.task_window)
        if self.tg.sampling is not None:
            raise UnsupportedSetting(
                f"balance.strategy={self.tg.cfg.balance.strategy} sets the next batch's task "
                "sampling, which the TRL integration does not support (its prompts per task "
                "are fixed)"
            )
        if window.first:
            window.balanced = balanced
            if self.tg.cfg.diagnostics.optimizer_geometry:
                window.params_before = self.tg.groups.snapshot()
        window.balance_seconds = time.perf_counter() - start

    def _get_grad_norm(self, model, grad_norm=None):
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self.tg_window is not None:
            self.tg_window.grad_norm = float(norm)
        return norm

    # -- after the optimizer step: the step's record ---------------------------------------------
    def _tg_record(self) -> None:
        window, gen = self.tg_window, self.tg_generation
        if window is None or not window.first:
            return
        tasks = self.tg.task_names
        micro = window.sums.statistics()
        metrics = M.per_task(tasks, {**gen.stats, **micro})
        metrics[M.train_key("reward")] = gen.reward
        metrics[M.train_key("loss")] = float(micro["loss"].sum())
        metrics[M.train_key("grad_norm")] = window.grad_norm
        metrics[M.train_key("lr")] = float(self._get_learning_rate())
        if window.balanced is not None:
            metrics.update(balance_metrics(tasks, window.balanced, self.tg.groups))
            metrics.update(self._tg_gradient_metrics(window))
        s = self.tg.cfg.diagnostics.gain_window
        metrics.update(window_gains(self.tg.history, tasks, gen.index, s))
        metrics[M.time_key("rollout")] = gen.seconds
        metrics[M.time_key("balance")] = window.balance_seconds
        metrics[M.time_key("step")] = time.perf_counter() - window.started
        if self.tg_run is not None:
            self.tg_run.log({M.STEP: gen.index, **metrics})
        for key, value in metrics.items():  # TRL averages them over its logging window
            parsed = M.parse(key, tasks)
            wanted = parsed.family in TRL_LOG_FAMILIES or parsed.scope in TRL_LOG_SCOPES
            if wanted and math.isfinite(value):  # undefined estimates: metrics.jsonl's null only
                self._metrics["train"][key].append(value)

    def _tg_gradient_metrics(self, window: Window) -> dict[str, float]:
        d, groups, tasks = self.tg.cfg.diagnostics, self.tg.groups, self.tg.task_names
        out = gradient_metrics(groups, window.balanced, tasks, d.scope, d.breakdown)
        state = self.optimizer.state.get(groups.params[0][1], {})
        if window.params_before is not None and "exp_avg_sq" in state:  # AdamW geometry
            precond = preconditioner(groups, self.optimizer, self.args.adam_beta2,
                                     self.args.adam_epsilon)  # fmt: skip
            delta = groups.snapshot() - window.params_before  # [P] the applied update
            out.update(adam_metrics(groups, window.balanced, precond, delta, tasks, d.scope))
        return out

    # -- the run directory -----------------------------------------------------------------------
    def _tg_begin(self, state) -> None:
        resume = getattr(self, "tg_resume_from", None)
        if resume and state.global_step > 0:
            self._tg_load(Path(resume))
        if not self.is_world_process_zero():
            return
        steps = math.ceil(state.max_steps / self.num_iterations)
        resumed = state.global_step // self.num_iterations if state.global_step > 0 else None
        cfg = self._tg_config(steps=steps, max_steps=state.max_steps)
        self.tg.cfg = cfg
        self.tg_run, kept = open_run(cfg, self.tg_run_path, resumed)
        if resumed is None:
            name = model_name(self.accelerator.unwrap_model(self.model))
            n_params = sum(p.numel() for p in self.model.parameters())
            self.tg_run.write_versions({
                **trl_versions(self.args, name), "parameters": n_params,
                "device": str(self.accelerator.device),
            })  # fmt: skip
        self.tg.history.clear()
        for record in kept:  # a resumed run's reward history (windowed gains)
            for task in self.tg.task_names:
                if record.get(M.task_key(task, "reward")) is not None:
                    self.tg.history[task].append(record[M.task_key(task, "reward")])

    def _tg_load(self, checkpoint: Path) -> None:
        """The strategy's state and window statistics saved in ``checkpoint`` (a checkpoint
        written before they were saved, or without them, restarts them: logged)."""
        path = checkpoint / STATE_FILE
        if not path.exists():
            log.warning("%s has no %s: the strategy's state restarts", checkpoint, STATE_FILE)
            return
        saved = torch.load(path, map_location="cpu", weights_only=False)
        self.tg.strategy.load_state_dict(saved["strategy"])
        self.tg.windows = saved["windows"]

    def _tg_save(self, checkpoint: Path) -> None:
        if self.is_world_process_zero() and checkpoint.is_dir():
            state = {"strategy": self.tg.strategy.state_dict(), "windows": self.tg.windows}
            torch.save(state, checkpoint / STATE_FILE)

    def _tg_end(self) -> None:
        if self.tg_run is not None:
            self.tg_run.finish(self.tg.task_names)


class _Hooks(TrainerCallback):
    """The points of Trainer's loop where the integration has work (see the module docstring)."""

    def __init__(self, trainer: TaskGradGRPOTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._tg_begin(state)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._tg_record()

    def on_save(self, args, state, control, **kwargs):  # after Trainer wrote the checkpoint
        self.trainer._tg_save(
            Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        )

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._tg_end()


# --- checks --------------------------------------------------------------------------------------


def check_supported(trainer: Any, task_column: str) -> None:
    """Stop with one line naming the first setting the decomposition cannot handle exactly."""
    args = trainer.args
    dataset = trainer.train_dataset
    checks = [
        (trainer.is_deepspeed_enabled, "DeepSpeed: its engine clips and steps inside the last "
         "micro-batch's backward, before the group gradients can be combined"),
        (trainer.is_fsdp_enabled or trainer.accelerator.num_processes > 1,
         f"{trainer.accelerator.num_processes} processes (DDP/FSDP): the group buffers need a "
         "cross-process reduction that is not implemented; run one process"),
        (args.steps_per_generation != args.gradient_accumulation_steps,
         f"steps_per_generation={args.steps_per_generation} != gradient_accumulation_steps="
         f"{args.gradient_accumulation_steps}: one optimizer step must hold one generation batch"),
        (trainer.loss_type not in TB.LOSS_TYPES,
         f"loss_type={trainer.loss_type!r}: supported {', '.join(TB.LOSS_TYPES)}"),
        (trainer.loss_type == "bnpo" and trainer.beta != 0.0,
         f"loss_type='bnpo' with beta={trainer.beta}: bnpo is exact only re-weighted through the "
         "advantages, which the KL term does not carry; use beta=0 or loss_type='dapo'"),
        (trainer._entropy_bonus_enabled,
         "entropy_coef / use_adaptive_entropy: the entropy bonus is a per-micro-batch token mean"),
        (trainer.top_entropy_quantile < 1.0,
         f"top_entropy_quantile={trainer.top_entropy_quantile}: the entropy mask's threshold is a "
         "quantile over each micro-batch, so task-pure micro-batches change it"),
        (trainer.aux_loss_enabled,
         "router_aux_loss_coef: the MoE load-balancing loss is not a sum over rows"),
        (trainer._is_vlm, "vision-language models: multimodal batches are not supported"),
        (dataset is None or isinstance(dataset, torch.utils.data.IterableDataset),
         "train_dataset: a map-style dataset is needed (TRL bypasses the sampler for iterable "
         "ones)"),
        (args.remove_unused_columns,
         f"remove_unused_columns=True drops the {task_column!r} column before taskgrad sees it"),
    ]  # fmt: skip
    for failed, message in checks:
        if failed:
            raise UnsupportedSetting(f"taskgrad + TRL: unsupported {message}")


def dataset_tasks(
    dataset: Any, column: str, names: tuple[str, ...] | None = None
) -> tuple[tuple[str, ...], list[int]]:
    """Task names (order of first appearance, unless given) and each row's task index (-1: none)."""
    if column not in (getattr(dataset, "column_names", None) or []):
        raise UnsupportedSetting(f"taskgrad + TRL: train_dataset has no task column {column!r}")
    values = [str(v) for v in dataset[column]]
    if names is None:
        names = tuple(dict.fromkeys(values))
    bad = [n for n in names if "/" in n or not n]
    if bad:
        raise UnsupportedSetting(f"taskgrad + TRL: task names {bad} (no '/', not empty)")
    ids = {n: k for k, n in enumerate(names)}
    return names, [ids.get(v, -1) for v in values]


def model_name(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or "?")
