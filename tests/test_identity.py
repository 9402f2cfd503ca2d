"""The refactor of the step into records changed no number: a run's metrics equal, step for step,
those that the code before it wrote for the same config and seed (``tests/golden/*.jsonl``,
written by taskgrad at 58987e5 with ``OMP_NUM_THREADS=1``, ``time/*`` left out).

Four configurations cover the loop's paths: the default four-task mix with every diagnostic
(breakdown, AdamW geometry, probes, one-step gains, a transfer matrix); per-module weights with
two inner updates, a KL penalty and clip-higher (pcgrad_modular); a sampling strategy with
seq_mean and no std scaling (mt_grpo); proxy-scope buffers measured every other step with the
constant aggregation. Every key of every record also parses under the metric schema.

Keys renamed by the refactor (old -> new) are mapped below; nothing else may differ.

Deliberate changes since, each made by the commit that rewrote the affected golden values:
- with several inner updates, ``gain/<task>/one_step`` brackets the step's first (on-policy)
  update, like every other measurement; it used to report the last one (pcgrad_modular.jsonl).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskgrad import metrics as M

GOLDEN = Path(__file__).parent / "golden"
TASKS = ["code", "countdown", "arithmetic", "table_qa"]
VERIFIER = {"format_ok", "tests_passed", "numbers_ok"}
SMALL = [
    "steps=4", "rollout.prompts_per_task=3", "rollout.group_size=4", "rollout.max_new_tokens=6",
    "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128", "model.tiny.num_layers=2",
    "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1", "model.tiny.warmstart_steps=400",
    "model.tiny.warmstart_batch=32", "eval.every=2", "eval.size=8", "diagnostics.probe_every=2",
    "diagnostics.probe_size=4", "diagnostics.probe_samples=2", "diagnostics.gain_window=1",
    "checkpoint_every=2", "optim.lr=1e-3", "progress=false",
    "diagnostics.one_step_at=[1,3]", "diagnostics.transfer_at=[2]",
]  # fmt: skip
CONFIGS = {
    "uniform": [],
    "pcgrad_modular": [
        "balance.strategy=pcgrad_modular", "grpo.inner_updates=2", "grpo.kl_coef=0.05",
        "grpo.clip_eps_high=0.28",
    ],
    "mt_grpo": ["balance.strategy=mt_grpo", "grpo.loss_agg=seq_mean", "grpo.scale_rewards=false"],
    "proxy": ["diagnostics.scope=proxy", "diagnostics.every=2", "grpo.loss_agg=constant"],
}  # fmt: skip


def renamed(key: str) -> str:
    """The key the refactored code writes for a key of the golden files."""
    p = key.split("/")
    if p[0] == "grad" and len(p) == 4 and p[3] == "task_weight":  # a share, logged every step
        return M.task_key(p[2], "batch_share")
    if p[0] == "task" and len(p) == 3 and p[2] in VERIFIER:
        return M.verifier_key(p[1], p[2])
    if p[0] == "balance" and not (len(p) == 3 and p[2] == "weight"):
        if len(p) == 3 and p[1] == "sampling":  # logged by the loop, not by the strategy
            return M.balance_key(p[2], "sampling")
        if len(p) == 3 and p[2] in TASKS:
            return M.balance_info_key(p[1], p[2])
        return M.balance_info_key("/".join(p[1:]))
    return key


def run_config(name: str, tmp: Path, cache: Path) -> list[dict]:
    run = tmp / name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "taskgrad.cli", "train", *SMALL, *CONFIGS[name],
        f"model.cache_dir={cache}", "--run-dir", str(run),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_metrics_equal_the_code_before_the_refactor(name, tmp_path, cache):
    golden = [json.loads(line) for line in (GOLDEN / f"{name}.jsonl").read_text().splitlines()]
    new = run_config(name, tmp_path, cache)
    assert [r["step"] for r in new] == [r["step"] for r in golden]
    worst = 0.0
    for old, rec in zip(golden, new, strict=True):
        rec = {k: v for k, v in rec.items() if not k.startswith("time/")}
        for key in rec:  # the schema describes every key the loop writes
            M.parse(key, TASKS)
        expected = {renamed(k): v for k, v in old.items()}
        # batch_share is logged at every step, task_weight was only at measured ones
        added = {k for k in set(rec) - set(expected) if k.endswith("/batch_share")}
        assert set(rec) - added == set(expected), (old["step"], set(rec) ^ set(expected))
        for key, value in expected.items():
            got = rec[key]
            if value is None or got is None:
                assert value is got, (old["step"], key, value, got)
                continue
            # Spearman and the share are recomputed by other code: float64 rounding only
            err = abs(got - value) / max(abs(value), 1e-300)
            worst = max(worst, err)
            assert err <= 1e-12, (old["step"], key, value, got)
    print(f"{name}: largest relative difference {worst:.2e}")
