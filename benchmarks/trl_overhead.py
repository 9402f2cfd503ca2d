"""Step time of TRL's GRPOTrainer: plain, with taskgrad (full and proxy scope), and masking.

    python benchmarks/trl_overhead.py [steps=21] [threads=1] [loss_type=dapo]

Setting (issue 13): a 0.666M-parameter Qwen2 (hidden 128, 4 layers, 4 heads / 2 KV heads,
intermediate 296, tied embeddings, taskgrad's character tokenizer, random weights), 4 tasks x
4 prompts x 8 completions = 128 sequences per step, at most 24 new tokens, micro-batches of 16
(one (task, half) group each), gradient_accumulation_steps 8, float32 on the CPU.

Modes, each a trainer built from the same saved model with the same seed:
  plain    GRPOTrainer as it is
  full     TaskGradGRPOTrainer, scope full (Gram, per-layer and per-module breakdown, run dir)
  proxy    TaskGradGRPOTrainer, scope proxy (the last attention block)
  full+adam  full, plus the AdamW-geometry shares (optimizer_geometry=True; off by default)
  masking  GRPOTrainer, then one extra forward + backward over the whole generation batch per
           task with the other tasks' advantages set to 0: what a TRL user can do today

**Paired, in lockstep.** The four trainers run in one process, each ``train()`` in a thread of
its own, and take turns one optimizer step at a time: round r runs step r of every mode, in an
order rotated every round, so machine load falls on all modes alike and the ratios are of paired
steps. A mode's turn starts at Trainer's ``on_step_begin``; each keeps its own torch / Python /
NumPy RNG state (seeded by TRL in ``__init__``) and accelerate's ``sync_gradients`` flag across
turns (both are process-wide), so every mode samples exactly the completions it would alone:
all four see the same completions (checked and printed). Step 1 (allocations, first calls) is
dropped. A step is Trainer's, from ``on_step_begin`` to ``on_step_end``: generation, 8
micro-batches, clip, AdamW, and taskgrad's record; "train" is the step minus generation and
scoring.

Prints per mode the median step time and the median over rounds of (mode / plain) per round
with its 95% bootstrap interval, the time spent inside taskgrad's hooks per step (measured
directly, so less noisy than a difference of step times), and how far each mode's parameters
end from plain TRL's (taskgrad runs ``uniform``).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

TASKS = ("digit", "upper", "vowel", "short")
PROMPTS, G, MAX_NEW = 4, 8, 24
TG_MODES = ("full", "proxy", "full+adam")  # the TaskGradGRPOTrainer modes


def reward(prompts, completions, task, **kwargs) -> list[float]:
    """One continuous reward per task (groups rarely tie, so every task has a gradient)."""
    out = []
    for text, name in zip(completions, task, strict=True):
        n = max(len(text), 1)
        if name == "digit":
            out.append(sum(c.isdigit() for c in text) / n)
        elif name == "upper":
            out.append(sum(c.isupper() for c in text) / n)
        elif name == "vowel":
            out.append(sum(c in "aeiou" for c in text) / n)
        else:
            out.append(1.0 - len(text) / MAX_NEW)
    return out


def build_model(path: Path) -> int:
    from taskgrad.config import TinyModelConfig
    from taskgrad.policy import build_char_tokenizer, build_tiny_model

    tok = build_char_tokenizer()
    model = build_tiny_model(tok, TinyModelConfig(intermediate_size=296), seed=0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def masking_trainer():
    from trl import GRPOTrainer

    class MaskingGRPOTrainer(GRPOTrainer):
        """Plain TRL's step, then per task the whole generation batch again with the other
        tasks' advantages zeroed (one forward + backward per micro-batch); plain .grad kept."""

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            if self.model.training:  # a per-row key survives TRL's shuffle and split
                out["task_id"] = torch.tensor([TASKS.index(x["task"]) for x in inputs])
            return out

        def training_step(self, model, inputs, num_items_in_batch):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if self.accelerator.sync_gradients:
                params = [p for p in model.parameters() if p.requires_grad]
                plain = [p.grad for p in params]
                self.task_grads = []
                for k in range(len(TASKS)):
                    for p in params:
                        p.grad = None
                    for mb in self._buffered_inputs:
                        keep = (mb["task_id"] == k).to(mb["advantages"].dtype)
                        masked = {**mb, "advantages": mb["advantages"] * keep}
                        with self.compute_loss_context_manager():
                            self.accelerator.backward(self.compute_loss(model, masked))
                    self.task_grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
                for p, g in zip(params, plain, strict=True):
                    p.grad = g
            return loss

    return MaskingGRPOTrainer


class Turns:
    """Turn-taking between trainer threads: one optimizer step per turn."""

    def __init__(self, names: list[str]) -> None:
        self.go = {n: threading.Event() for n in names}
        self.done = {n: threading.Event() for n in names}
        self.errors: dict[str, BaseException] = {}

    def wait_turn(self, name: str) -> None:
        self.go[name].wait()
        self.go[name].clear()

    def end_turn(self, name: str) -> None:
        self.done[name].set()

    def run_round(self, order: list[str]) -> None:
        for name in order:
            self.go[name].set()
            self.done[name].wait()
            self.done[name].clear()


def step_timer(name: str, turns: Turns):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Yields the turn at every step's start after the first; times the step."""

        def __init__(self) -> None:
            self.trainer = None
            self.times: list[float] = []
            self.started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step > 0:  # the process-wide state this mode must keep
                gradient_state = self.trainer.accelerator.gradient_state
                sync = gradient_state.sync_gradients
                rng = torch.get_rng_state(), random.getstate(), np.random.get_state()
                turns.end_turn(name)
                turns.wait_turn(name)
                torch.set_rng_state(rng[0])
                random.setstate(rng[1])
                np.random.set_state(rng[2])
                gradient_state._set_sync_gradients(sync)
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.started)

    return StepTimer()


def make_trainer(mode: str, model_dir: Path, out: Path, steps: int, loss_type: str, timer):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from taskgrad.integrations.trl import TaskGradGRPOTrainer
    from taskgrad.policy import load_tokenizer

    rows = [{"prompt": f"{t} #{j}:", "task": t} for t in TASKS for j in range(PROMPTS)]
    args = GRPOConfig(
        output_dir=str(out / mode), per_device_train_batch_size=16, gradient_accumulation_steps=8,
        num_generations=G, max_completion_length=MAX_NEW, max_steps=steps, learning_rate=1e-3,
        loss_type=loss_type, bf16=False, use_cpu=True, seed=0, logging_steps=1, report_to="none",
        save_strategy="no", disable_tqdm=True, shuffle_dataset=False, dataloader_num_workers=0,
    )  # fmt: skip
    cls = {"plain": GRPOTrainer, "masking": masking_trainer()}.get(mode, TaskGradGRPOTrainer)
    extra = {
        "full": {"scope": "full"},
        "proxy": {"scope": "proxy"},
        "full+adam": {"scope": "full", "optimizer_geometry": True},
    }.get(mode, {})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = load_tokenizer(str(model_dir))
    data = Dataset.from_list(rows)
    trainer = timed(cls)(model=model, reward_funcs=reward, args=args, processing_class=tokenizer,
                         train_dataset=data, callbacks=[timer], **extra)  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    trainer.bench_gen, trainer.bench_ids, trainer.bench_hooks = [], [], []
    if hasattr(trainer, "tg"):  # time in the group buffers' captures, too
        close = trainer.tg.groups.close_group
        trainer.tg.groups.close_group = lambda m: trainer.bench_hook(close, m)
    timer.trainer = trainer
    return trainer


def timed(base: type) -> type:
    """``base`` that keeps, per step, its generation time, a checksum of its completions and the
    time spent inside taskgrad's hooks (everything the integration adds to TRL's step)."""

    class Timed(base):
        def _generate_and_score_completions(self, inputs):
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            if self.model.training:
                self.bench_gen.append(time.perf_counter() - start)
                self.bench_ids.append(int(out["completion_ids"].sum()))
                self.bench_hooks.append(0.0)
            return out

        def bench_hook(self, fn, *args):
            start = time.perf_counter()
            out = fn(*args)
            self.bench_hooks[-1] += time.perf_counter() - start
            return out

        def _tg_layout(self, rows):  # the layout, without TRL's generation inside it
            out = self.bench_hook(super()._tg_layout, rows)
            self.bench_hooks[-1] -= self.bench_gen[-1]
            return out

        def _tg_open_window(self):
            return self.bench_hook(super()._tg_open_window)

        def _tg_balance(self, window, gen):
            return self.bench_hook(super()._tg_balance, window, gen)

        def _tg_record(self):
            return self.bench_hook(super()._tg_record)

    return Timed


def main(argv: list[str]) -> None:
    opts = {"steps": 21, "threads": 1, "loss_type": "dapo"}
    for arg in argv:
        key, value = arg.split("=", 1)
        opts[key] = type(opts[key])(value)
    torch.set_num_threads(opts["threads"])
    import transformers
    import trl

    modes = ["plain", "full", "proxy", "full+adam", "masking"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_params = build_model(root / "model")
        turns = Turns(modes)
        timers = {m: step_timer(m, turns) for m in modes}
        trainers, seeded = {}, {}
        for m in modes:  # TRL seeds the process-wide RNGs in __init__: keep each mode's state
            trainers[m] = make_trainer(m, root / "model", root, opts["steps"], opts["loss_type"],
                                       timers[m])  # fmt: skip
            seeded[m] = torch.get_rng_state(), random.getstate(), np.random.get_state()

        def run(mode: str) -> None:
            turns.wait_turn(mode)
            torch.set_rng_state(seeded[mode][0])
            random.setstate(seeded[mode][1])
            np.random.set_state(seeded[mode][2])
            try:
                trainers[mode].train()
            except BaseException as e:  # reported by the main thread
                turns.errors[mode] = e
            turns.end_turn(mode)

        threads = [threading.Thread(target=run, args=(m,), daemon=True) for m in modes]
        for t in threads:
            t.start()
        load = os.getloadavg()[0]
        for r in range(opts["steps"]):
            turns.run_round(modes[r % len(modes) :] + modes[: r % len(modes)])
            if turns.errors:
                raise next(iter(turns.errors.values()))
        for t in threads:
            t.join()
        balance = {
            m: statistics.median(r["time/balance"] for r in _records(root / m / "taskgrad"))
            for m in TG_MODES
        }
    same = all(trainers[m].bench_ids == trainers["plain"].bench_ids for m in modes)
    print(
        f"trl {trl.__version__}, transformers {transformers.__version__}, torch "
        f"{torch.__version__}; model {n_params / 1e6:.3f}M parameters; {len(TASKS)} tasks x "
        f"{PROMPTS} prompts x {G} completions, at most {MAX_NEW} new tokens; "
        f"loss_type={opts['loss_type']}; torch threads {torch.get_num_threads()}; "
        f"{opts['steps'] - 1} paired rounds (step 1 dropped), order rotated; load average "
        f"{load:.1f} -> {os.getloadavg()[0]:.1f}; same completions in every mode: {same}"
    )
    _report({m: trainers[m] for m in modes}, {m: timers[m].times for m in modes})
    plain = dict(trainers["plain"].model.named_parameters())
    for m in (
        "full",
        "proxy",
        "full+adam",
        "masking",
    ):  # uniform: TRL's update, whatever taskgrad measured
        diff = max(
            float((p - plain[n]).abs().max()) for n, p in trainers[m].model.named_parameters()
        )
        print(f"  {m}: parameters after {opts['steps']} steps vs plain, max |diff| {diff:.2e}")
    for m, seconds in balance.items():
        print(f"  {m}: time/balance (Gram, strategy, restore) median {seconds * 1e3:.1f} ms")


def _records(run_dir: Path) -> list[dict]:
    from taskgrad.rundir import RunDir

    return RunDir(run_dir).records()[1:]


def _report(trainers: dict, times: dict[str, list[float]]) -> None:
    plain_step = times["plain"][1:]
    plain_train = [s - g for s, g in zip(plain_step, trainers["plain"].bench_gen[1:], strict=True)]
    print(f"{'mode':<8} {'step s':>8} {'gen s':>7} {'train s':>8} {'step ratio [95% CI]':>22} "
          f"{'train ratio':>12}")  # fmt: skip
    for mode, trainer in trainers.items():
        step, gen = times[mode][1:], trainer.bench_gen[1:]
        train = [s - g for s, g in zip(step, gen, strict=True)]
        ratios = [a / b for a, b in zip(step, plain_step, strict=True)]
        low, high = median_ci(ratios)
        t_ratio = statistics.median(a / b for a, b in zip(train, plain_train, strict=True))
        print(f"{mode:<8} {statistics.median(step):>8.4f} {statistics.median(gen):>7.4f} "
              f"{statistics.median(train):>8.4f} {statistics.median(ratios):>8.3f} "
              f"[{low:.3f}, {high:.3f}] {t_ratio:>12.3f}")  # fmt: skip
    for mode in TG_MODES:
        hooks = statistics.median(trainers[mode].bench_hooks[1:])
        print(f"  {mode}: inside taskgrad's hooks (layout, captures, balance, record) median "
              f"{hooks * 1e3:.1f} ms per step = {hooks / statistics.median(plain_step):.3f} of "
              "plain's median step")  # fmt: skip


def median_ci(values: list[float], reps: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of the median (percentiles of resampled medians)."""
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(reps))
    return meds[int(0.025 * reps)], meds[int(0.975 * reps) - 1]


if __name__ == "__main__":
    main(sys.argv[1:])
