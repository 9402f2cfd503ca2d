"""Synthetic run directories with planted structure, written with the real metric keys.

``write_run`` writes config.yaml (the resolved config), metrics.jsonl, summary.json and
versions.json as the trainer would; arrays passed in ([T, K]: steps 1..T by task) plant the
structure that the analysis should recover, everything else gets plain defaults.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import yaml

from taskgrad import metrics as M
from taskgrad.config import load_config, to_dict
from taskgrad.summary import summarize


def _imbalance(values: list[float | None]) -> float | None:
    pos = [v for v in values if v is not None and v > 0]
    return max(pos) / min(pos) if len(pos) >= 2 else None


def _defaults(steps: int, k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    t = np.arange(1, steps + 1)[:, None] / steps  # [T, 1]
    ranks = np.arange(k)[None, :]  # [1, K]
    return {
        "u": 1e-3 * np.exp(-2 * t) * (1 + ranks) * np.exp(0.1 * rng.standard_normal((steps, k))),
        "reward": np.clip(
            0.2 + 0.1 * ranks + 0.3 * t + 0.02 * rng.standard_normal((steps, k)), 0, 1
        ),
        "abs_advantage": 0.5 + 0.05 * rng.standard_normal((steps, k)),
        "response_length": 6.0 + 2 * ranks + 0.5 * rng.standard_normal((steps, k)),
    }


def step_record(
    step: int, tasks: list[str], arrays: dict[str, np.ndarray], rng: np.random.Generator
) -> dict:
    """One training-step record with the trainer's keys; ``arrays`` rows are steps 1..T."""
    i, rec = step - 1, {"step": step}
    weights = arrays["response_length"][i] / arrays["response_length"][i].sum()
    for k, task in enumerate(tasks):
        u, r, adv = (float(arrays[n][i, k]) for n in ("u", "reward", "abs_advantage"))
        rec |= {
            M.task_key(task, "reward"): r,
            M.task_key(task, "accuracy"): r,
            M.task_key(task, "reward_var"): r * (1 - r),
            M.task_key(task, "abs_advantage"): adv,
            M.task_key(task, "zero_adv_share"): float(np.clip(1 - 2 * adv, 0, 1)),
            M.task_key(task, "response_length"): float(arrays["response_length"][i, k]),
            M.task_key(task, "prompt_length"): 20.0 + k,
            M.task_key(task, "entropy"): 1.0 + 0.1 * rng.standard_normal(),
            M.task_key(task, "batch_share"): float(weights[k]),
            M.grad_key("full", task, "sqnorm_unbiased"): u,
            M.grad_key("full", task, "sqnorm_naive"): abs(u) * 1.5 + 1e-6,
            M.grad_key("full", task, "noise"): abs(u) * 1.5 + 1e-6 - u,
            M.grad_key("full", task, "update_share"): 1 / len(tasks),
            M.grad_key("full", task, "precond_share"): 1 / len(tasks),
            M.grad_key("full", task, "applied_share"): 1 / len(tasks),
            M.grad_key("full", task, "step_share"): 1 / len(tasks),
            M.grad_key("full", task, "precond_sqnorm"): u * 2,
            M.grad_key("proxy", task, "sqnorm_unbiased"): (
                u * 0.1 * math.exp(0.1 * rng.standard_normal())
            ),
        }
    us = [rec[M.grad_key("full", t, "sqnorm_unbiased")] for t in tasks]
    rec[M.grad_scope_key("full", "imbalance")] = _imbalance(us)
    rec[M.grad_scope_key("full", "precond_imbalance")] = _imbalance([2 * v for v in us])
    for a in range(len(tasks)):
        for b in range(a + 1, len(tasks)):
            cos = 0.1 * (a - b) + 0.05 * rng.standard_normal()
            rec[M.cos_key("full", tasks[a], tasks[b])] = cos
            planted = arrays.get("cos", {}).get((a, b), cos)
            rec[M.inner_key("full", tasks[a], tasks[b])] = planted * math.sqrt(abs(us[a] * us[b]))
    return rec


# The mix of runs whose planted arrays have four columns (the analysis tests' planted effects are
# written for these four tasks in this order; other runs use the config's own mix).
FOUR_TASKS = "tasks=[{name: code}, {name: countdown}, {name: arithmetic}, {name: table_qa}]"


def write_run(
    path: Path,
    *,
    seed: int = 0,
    steps: int = 40,
    preset: str | None = None,
    overrides: tuple[str, ...] = (),
    arrays: dict[str, np.ndarray] | None = None,
    null_every: int = 0,
    transfer_at: tuple[int, ...] = (),
) -> Path:
    """Write a complete synthetic run directory; returns its path.

    ``null_every``: every n-th step, the first task's u, the imbalance and one cosine are null
    (as the trainer writes undefined estimates), and its u is negative the step after.
    """
    cfg = load_config(
        preset, [f"steps={steps}", f"seed={seed}", f"run_name={path.name}", *overrides]
    )
    widths = {np.shape(a)[1] for a in (arrays or {}).values() if np.ndim(a) == 2}
    if widths == {4} and len(cfg.tasks) != 4:  # arrays planted for the four-task mix
        cfg = load_config(preset, [FOUR_TASKS, f"steps={steps}", f"seed={seed}",
                                   f"run_name={path.name}", *overrides])  # fmt: skip
    tasks = [t.name for t in cfg.tasks]
    rng = np.random.default_rng(seed)
    data = _defaults(steps, len(tasks), rng) | (arrays or {})
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    records = [{M.STEP: 0, **_eval(tasks, data["reward"][0])}]
    s, history = cfg.diagnostics.gain_window, data["reward"]
    for step in range(1, steps + 1):
        rec = step_record(step, tasks, data, rng)
        if null_every and step % null_every == 0:
            rec[M.grad_key("full", tasks[0], "sqnorm_unbiased")] = None
            rec[M.grad_scope_key("full", "imbalance")] = None
            rec[M.cos_key("full", tasks[0], tasks[1])] = None
        if null_every and step % null_every == 1 and step > 1:
            rec[M.grad_key("full", tasks[0], "sqnorm_unbiased")] = -1e-5
        if step >= 2 * s:  # the trainer's windowed gain, centred s steps back
            c = step - s
            for k, task in enumerate(tasks):
                rec[M.gain_key(task, "window")] = float(
                    history[c : c + s, k].mean() - history[c - s : c, k].mean()
                )
            rec[M.WINDOW_CENTER] = c
        every = cfg.diagnostics.probe_every
        if every and step % every == 0:
            for task in tasks:
                rec |= {
                    M.gain_key(task, "probe"): 0.01,
                    M.gain_key(task, "probe_ci_low"): -0.01,
                    M.gain_key(task, "probe_ci_high"): 0.03,
                }
        if step in transfer_at:
            for j, a in enumerate(tasks):
                for k, b in enumerate(tasks):
                    rec[M.transfer_key(a, b)] = 0.02 if j == k else -0.005 * (j + k)
        if cfg.eval.every and (step % cfg.eval.every == 0 or step == steps):
            rec |= _eval(tasks, data["reward"][step - 1])
        records.append(rec)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    _write_summary(path, records, tasks)
    return path


def _eval(tasks: list[str], rewards: np.ndarray) -> dict:
    out = {
        M.eval_key(t): float(np.clip(r - 0.1, 0, 1)) for t, r in zip(tasks, rewards, strict=True)
    }
    out[M.EVAL_MEAN] = sum(out.values()) / len(tasks)
    return out


def _write_summary(path: Path, records: list[dict], tasks: list[str]) -> None:
    (path / "summary.json").write_text(json.dumps(summarize(records, tasks), indent=2))
    (path / "versions.json").write_text(json.dumps({"taskgrad": "synthetic", "torch": "n/a"}))
