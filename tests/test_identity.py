"""A run's metrics equal, step for step, the recorded golden metrics of the same config and seed
(``tests/golden/*.jsonl``, ``time/*`` left out, ``OMP_NUM_THREADS=1``), and every key parses.

Four configurations cover the loop's paths: the default four-task mix with every diagnostic
(breakdown, AdamW geometry and task momenta, probes, one-step gains, a transfer matrix);
per-module weights with two inner updates, a KL penalty and clip-higher (pcgrad_modular); a
sampling strategy with seq_mean and no std scaling (mt_grpo); proxy-scope buffers measured every
other step with the constant aggregation.

History of the golden files (each change in the commit that made it, with its reason):
- written by the code before the step-records refactor (58987e5); the refactor reproduced every
  number to a relative 1e-12 after mapping its renamed keys (commit 6dfbdc2);
- one-step probes bracket the first of several inner updates (12 values of pcgrad_modular);
- issue 10's loop changes rewrote them: seed-independent held-out sets (so every eval/ value),
  new keys (inner products, objective_scale, applied_share, transfer standard errors,
  per-module weights), precond_* for adam_*, strategies reading window means (mt_grpo), step
  shares computed from the applied per-parameter weights.

``python -m tests.test_identity`` rewrites the files with the current code: do it only for a
deliberate change of behaviour, and say so here.
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
def test_metrics_equal_the_golden_ones(name, tmp_path, cache):
    golden = [json.loads(line) for line in (GOLDEN / f"{name}.jsonl").read_text().splitlines()]
    new = [without_time(r) for r in run_config(name, tmp_path, cache)]
    assert [r["step"] for r in new] == [r["step"] for r in golden]
    worst = 0.0
    for expected, rec in zip(golden, new, strict=True):
        for key in rec:  # the schema describes every key the loop writes
            M.parse(key, TASKS)
        assert set(rec) == set(expected), (expected["step"], set(rec) ^ set(expected))
        for key, value in expected.items():
            got = rec[key]
            if value is None or got is None:
                assert value is got, (expected["step"], key, value, got)
                continue
            err = abs(got - value) / max(abs(value), 1e-300)
            worst = max(worst, err)
            assert err <= 1e-12, (expected["step"], key, value, got)
    print(f"{name}: largest relative difference {worst:.2e}")


def without_time(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("time/")}


if __name__ == "__main__":  # rewrite the golden files with the current code
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for config in CONFIGS:
            records = [without_time(r) for r in run_config(config, Path(tmp), Path(tmp) / "c")]
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
            (GOLDEN / f"{config}.jsonl").write_text(text)
            print(config, len(records), "records")
