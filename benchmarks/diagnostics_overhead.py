"""Overhead of per-task gradient diagnostics: step time with diagnostics / without, one run.

Every measured step is run three times from the same saved state (model, optimizer, scheduler):
without diagnostics, with full-scope diagnostics, and with proxy-scope diagnostics, in an order
that rotates from step to step. The three see the very same prompts, completions and
micro-batches, so the ratios compare like with like and machine noise is shared. Probes,
transfer matrices and evaluation are periodic extras, not part of the step, and are off here.

    python benchmarks/diagnostics_overhead.py [steps=12] [key=value ...]

Prints the median step time per mode and the medians of the per-step ratios, for the whole step
and for the phases diagnostics touch (backward + optimizer).
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time

import torch


def main(argv: list[str]) -> None:
    from taskgrad.config import load_config
    from taskgrad.gradients import GroupGradients
    from taskgrad.train import train_step
    from taskgrad.trainer import setup

    steps = 12
    overrides = []
    for arg in argv:
        if arg.startswith("steps="):
            steps = int(arg.split("=", 1)[1])
        else:
            overrides.append(arg)
    base = [
        "progress=false", "eval.every=0", "diagnostics.probe_every=0", "diagnostics.gain_window=0",
        f"steps={steps + 2}",
    ]  # fmt: skip
    cfg = load_config(None, base + overrides)
    with tempfile.TemporaryDirectory() as tmp:
        cfg.runs_root = tmp
        trainer = setup(cfg, None, resume=False)
        model = trainer.accelerator.unwrap_model(trainer.model)
        k = len(trainer.tasks)
        modes = {
            "off": None,
            "full": GroupGradients(model, "full", 2 * k),
            "proxy": GroupGradients(model, "proxy", 2 * k),
        }
        times: dict[str, list[float]] = {m: [] for m in modes}
        core: dict[str, list[float]] = {m: [] for m in modes}
        train_step(trainer, 1)  # warm-up: first-call allocations
        names = list(modes)
        for step in range(2, steps + 2):
            saved = _save(trainer)
            shift = step % len(names)  # rotate the order: no mode always runs first
            for mode in names[shift:] + names[:shift]:
                groups = modes[mode]
                _restore(trainer, saved)
                trainer.groups = groups
                cfg.diagnostics.scope = mode if mode != "off" else "full"
                t0 = time.perf_counter()
                metrics = train_step(trainer, step)
                times[mode].append(time.perf_counter() - t0)
                core[mode].append(metrics["time/backward"] + metrics["time/optimizer"])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {cfg.model.name_or_path} ({n_params / 1e6:.2f}M parameters), {k} tasks, "
          f"{steps} paired steps, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'mode':<6} {'step s':>8} {'bwd+opt s':>10} {'step ratio':>11} {'bwd+opt ratio':>14}")
    for mode in modes:
        step_ratio = statistics.median(
            a / b for a, b in zip(times[mode], times["off"], strict=True)
        )
        core_ratio = statistics.median(a / b for a, b in zip(core[mode], core["off"], strict=True))
        step_s, core_s = statistics.median(times[mode]), statistics.median(core[mode])
        print(f"{mode:<6} {step_s:>8.4f} {core_s:>10.4f} {step_ratio:>11.3f} {core_ratio:>14.3f}")


def _save(trainer):
    model = trainer.accelerator.unwrap_model(trainer.model)
    return (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(trainer.optimizer.state_dict()),
        copy.deepcopy(trainer.scheduler.state_dict()),
    )


def _restore(trainer, saved) -> None:
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.load_state_dict(saved[0])
    trainer.optimizer.load_state_dict(copy.deepcopy(saved[1]))
    trainer.scheduler.load_state_dict(saved[2])


if __name__ == "__main__":
    main(sys.argv[1:])
