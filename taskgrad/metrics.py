"""The metric schema: every key a run writes to ``metrics.jsonl``, built and parsed here.

A record is one flat JSON object per step (step 0: the evaluation before training). Keys are
namespaced by family; ``<task>`` is a task's instance name from the config, ``<scope>`` a
gradient scope (``full``, ``proxy``, ``custom``, a module kind or ``layerNN``):

| family    | key                            | what it is                                      |
|-----------|--------------------------------|-------------------------------------------------|
| step      | `step`                         | training step (0: before training)              |
| task/     | `task/<task>/<stat>`           | the step's rollout statistics (TASK_STATS)      |
|           | `task/<task>/verifier/<name>`  | mean of a verifier's reward component           |
|           | `task/<task>/nonfinite`        | 1: its loss/gradient was non-finite (only then) |
| grad/     | `grad/<scope>/<task>/<stat>`   | per-task gradient estimates (GRAD_STATS)        |
|           | `grad/<scope>/cos/<a>__<b>`    | cosine of two task gradients (per-step)         |
|           | `grad/<scope>/inner/<a>__<b>`  | <g_a, g_b>: unbiased cross-task inner product   |
|           | `grad/<scope>/<stat>`          | scope-wide values (GRAD_SCOPE_STATS)            |
|           | `grad/proxy_agreement/spearman`| full vs proxy ranking of the tasks, this step   |
| balance/  | `balance/<task>/weight`        | the strategy's multiplier on G_k                |
|           | `balance/<task>/weight/<kind>` | the multiplier a module kind applied (per-module)|
|           | `balance/<task>/sampling`      | the next batch's task sampling probability      |
|           | `balance/<task>/info/<name>`   | a strategy's own per-task value (finite only)   |
|           | `balance/info/<name>`          | a strategy's own scalar                         |
| gain/     | `gain/<task>/<stat>`           | learning gains (GAIN_STATS)                     |
|           | `gain/window_center`           | the step the windowed gain is centred on        |
| probe/    | `probe/<task>/reward`          | mean probe reward (fixed prompts and seeds)     |
| transfer/ | `transfer/<j>__<k>`            | probe gain on k from task j's part of the step  |
|           | `transfer/<j>__<k>/se`         | its standard error over the probe prompts       |
| eval/     | `eval/<task>/accuracy`         | greedy held-out accuracy                        |
|           | `eval/mean_accuracy`           | its mean over the tasks                         |
| train/    | `train/<stat>`                 | batch-wide values (TRAIN_STATS)                 |
|           | `train/skipped`                | 1: the step was skipped (non-finite; only then) |
| time/     | `time/<phase>`, `time/step`    | seconds per phase of the step, and in all       |

Besides step records, ``metrics.jsonl`` holds *resume markers* ``{"resume": S, "time": ...,
"pid": ...}`` (no ``step`` key): a resume from the checkpoint of step S appended it, and the
records before it with a step after S no longer count. Read the file with
``taskgrad.rundir.read_records`` (or ``RunDir.records``), which applies them (taskgrad/rundir.py).

Per-step gradient values (`grad/`) are per-step *estimates*: unbiased where stated, but noisy;
aggregate them over steps before taking ratios, logs or cosines (see gradients.py).

Writers (the loop), readers (taskgrad.analysis) and the test fixtures build keys with the
functions below, never by hand (readers pass ``"{task}"`` as the task to get a pattern, e.g.
``task_key("{task}", "reward")``); ``parse`` checks a key against the schema.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

TASK_STATS = {
    "prompts": "prompts of the task in the batch",
    "reward": "mean reward of its completions",
    "accuracy": "share of completions with reward 1",
    "reward_var": "r (1 - r) of the mean reward r (Bernoulli variance)",
    "abs_advantage": "mean |advantage| of its completions",
    "zero_adv_share": "share of its prompts whose completions all scored alike",
    "response_length": "mean completion length, tokens (EOS included)",
    "prompt_length": "mean prompt length, tokens",
    "entropy": "mean next-token entropy over its completion tokens",
    "clip_frac": "share of its completion tokens where the PPO clip was active",
    "loss": "its part of the batch loss (sum of its weighted token losses)",
    "kl": "mean k3 KL to the reference policy per completion token (kl_coef > 0)",
    "batch_share": "s_k: its share of the batch objective (N_k/N for token_mean, B_k/B else)",
    "objective_scale": "kappa_k in E g_k ~ -kappa_k grad J_k (batch.objective_scale)",
    "nonfinite": "1 when its loss or group gradient was non-finite (the step was skipped; "
    "written only then)",
    "logprob_diff_mean": "mean |trainer - engine| log-prob of its sampled tokens (vLLM)",
    "logprob_diff_max": "max |trainer - engine| log-prob of its sampled tokens (vLLM)",
}
GRAD_STATS = {
    "sqnorm_unbiased": "<g_kA, g_kB>: split-half unbiased estimate of ||E g_k||^2",
    "sqnorm_naive": "||g_k||^2 of the sampled task gradient (biased up by noise)",
    "noise": "sqnorm_naive - sqnorm_unbiased",
    "update_share": "<w_k G_k, g> / ||g||^2: share of the applied update",
    "contribution_sqnorm": "||w_k G_k||^2: squared norm of its part of the update",
    "applied_share": "its share of AdamW's applied step, through per-task first moments",
    "precond_share": "share of the AdamW-preconditioned fresh gradient (no momentum)",
    "precond_sqnorm": "<P g_kA, P g_kB>, P AdamW's preconditioner (not unbiased: P uses g)",
    "step_dot": "<w_k G_k, dtheta>: first-order loss change from the applied step",
    "step_share": "step_dot / sum_j step_dot",
}
GRAD_SCOPE_STATS = {
    "imbalance": "max_k / min_k of the positive per-step unbiased squared norms",
    "total_sqnorm": "||g||^2 of the applied (combined) gradient",
    "precond_imbalance": "imbalance of precond_sqnorm",
    "decay_share": "weight decay's share of AdamW's applied step (with applied_share)",
}
GAIN_STATS = {
    "window": "mean reward over the s steps after gain/window_center minus the s before",
    "probe": "paired probe reward difference since the previous probe",
    "probe_ci_low": "95% normal interval of probe, low end",
    "probe_ci_high": "95% normal interval of probe, high end",
    "one_step": "paired probe reward after minus before one update",
    "one_step_ci_low": "95% normal interval of one_step, low end",
    "one_step_ci_high": "95% normal interval of one_step, high end",
}
TRAIN_STATS = {
    "reward": "mean reward of the batch",
    "loss": "the batch loss",
    "grad_norm": "global gradient norm before clipping",
    "lr": "learning rate of the step",
    "skipped": "1 when the step was skipped: a non-finite loss or gradient (written only then)",
    "logprob_diff_mean": "mean |trainer - engine| log-prob over the batch's response tokens",
    "logprob_diff_max": "max |trainer - engine| log-prob over the batch's response tokens",
    "is_weight_mean": "mean truncated importance weight min(pi_old / mu, cap) per token",
    "is_capped_share": "share of response tokens whose importance weight hit the cap",
}
BALANCE_STATS = {"weight", "sampling"}
PROXY_AGREEMENT = "grad/proxy_agreement/spearman"
STEP = "step"

# --- key builders ------------------------------------------------------------------------------


def task_key(task: str, stat: str) -> str:
    return f"task/{task}/{stat}"


def verifier_key(task: str, name: str) -> str:
    return f"task/{task}/verifier/{name}"


def grad_key(scope: str, task: str, stat: str) -> str:
    return f"grad/{scope}/{task}/{stat}"


def cos_key(scope: str, a: str, b: str) -> str:
    return f"grad/{scope}/cos/{a}__{b}"


def inner_key(scope: str, a: str, b: str) -> str:
    return f"grad/{scope}/inner/{a}__{b}"


def grad_scope_key(scope: str, stat: str) -> str:
    return f"grad/{scope}/{stat}"


def balance_key(task: str, stat: str) -> str:
    return f"balance/{task}/{stat}"


def balance_info_key(name: str, task: str | None = None) -> str:
    return f"balance/info/{name}" if task is None else f"balance/{task}/info/{name}"


def gain_key(task: str, stat: str) -> str:
    return f"gain/{task}/{stat}"


WINDOW_CENTER = "gain/window_center"


def probe_key(task: str) -> str:
    return f"probe/{task}/reward"


def transfer_key(source: str, target: str, stat: str = "") -> str:
    return f"transfer/{source}__{target}" + (f"/{stat}" if stat else "")


def eval_key(task: str) -> str:
    return f"eval/{task}/accuracy"


EVAL_MEAN = "eval/mean_accuracy"


def train_key(stat: str) -> str:
    return f"train/{stat}"


SKIPPED = "train/skipped"  # 1.0 on a skipped step, absent otherwise (taskgrad/numerics.py)


def nonfinite_key(task: str) -> str:
    """1.0 when the task's loss or group gradient was non-finite (skipped steps only)."""
    return task_key(task, "nonfinite")


def time_key(phase: str) -> str:
    return f"time/{phase}"


# --- per-task tensors -> records ---------------------------------------------------------------


def per_task(
    tasks: list[str], values: Mapping[str, torch.Tensor], key=task_key
) -> dict[str, float]:
    """{key(task, name): value} for every name -> [K] tensor (NaN is kept: written as null)."""
    return {
        key(task, name): float(v[k]) for name, v in values.items() for k, task in enumerate(tasks)
    }


def clean(value):
    """JSON has no NaN: undefined estimates are written as null (in nested values too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


# --- parsing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """A parsed metric key: its family and whichever parts the family has."""

    family: str
    stat: str
    task: str | None = None
    scope: str | None = None
    pair: tuple[str, str] | None = None


class SchemaError(ValueError):
    """A key that the schema does not describe."""


def _pair(text: str, tasks: Iterable[str]) -> tuple[str, str] | None:
    names = set(tasks)
    for i in range(len(text)):
        if text.startswith("__", i) and text[:i] in names and text[i + 2 :] in names:
            return text[:i], text[i + 2 :]
    return None


def _task_prefix(rest: str, tasks: Iterable[str]) -> tuple[str, str] | None:
    """(task, remainder) for ``<task>/<remainder>``; the longest task name wins."""
    for task in sorted(tasks, key=len, reverse=True):
        if rest.startswith(task + "/"):
            return task, rest[len(task) + 1 :]
    return None


def parse(key: str, tasks: Iterable[str]) -> Key:
    """Parse ``key`` against the schema for a run with ``tasks``; SchemaError if it is not one."""
    tasks = list(tasks)
    if key == STEP:
        return Key("step", "step")
    family, _, rest = key.partition("/")
    split = _task_prefix(rest, tasks)
    if family == "task" and split:
        task, stat = split
        if stat in TASK_STATS:
            return Key("task", stat, task)
        if stat.startswith("verifier/") and len(stat) > len("verifier/"):
            return Key("task", stat, task)
    elif family == "grad":
        if key == PROXY_AGREEMENT:
            return Key("grad", "spearman", scope="proxy_agreement")
        scope, _, rest = rest.partition("/")
        split = _task_prefix(rest, tasks)
        if split and split[1] in GRAD_STATS:
            return Key("grad", split[1], split[0], scope)
        for kind in ("cos", "inner"):
            if rest.startswith(f"{kind}/") and (pair := _pair(rest[len(kind) + 1 :], tasks)):
                return Key("grad", kind, scope=scope, pair=pair)
        if rest in GRAD_SCOPE_STATS and scope:
            return Key("grad", rest, scope=scope)
    elif family == "balance":
        stat = split[1] if split else ""
        if split and (stat in BALANCE_STATS or stat.startswith(("info/", "weight/"))):
            return Key("balance", split[1], split[0])
        if rest.startswith("info/") and len(rest) > len("info/"):
            return Key("balance", rest)
    elif family == "gain":
        if key == WINDOW_CENTER:
            return Key("gain", "window_center")
        if split and split[1] in GAIN_STATS:
            return Key("gain", split[1], split[0])
    elif family == "probe" and split and split[1] == "reward":
        return Key("probe", "reward", split[0])
    elif family == "transfer":
        if pair := _pair(rest, tasks):
            return Key("transfer", "transfer", pair=pair)
        if rest.endswith("/se") and (pair := _pair(rest[: -len("/se")], tasks)):
            return Key("transfer", "se", pair=pair)
    elif family == "eval":
        if key == EVAL_MEAN:
            return Key("eval", "mean_accuracy")
        if split and split[1] == "accuracy":
            return Key("eval", "accuracy", split[0])
    elif family == "train" and rest in TRAIN_STATS:
        return Key("train", rest)
    elif family == "time" and rest:
        return Key("time", rest)
    raise SchemaError(f"metric key {key!r} is not in the schema (taskgrad/metrics.py)")
