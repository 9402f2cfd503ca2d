"""End to end: the CLI on the tiny model, the run directory, parameters changing, resume."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from taskgrad.config import load_config
from taskgrad.rundir import read_records
from taskgrad.tasks import Reward, Sample, Task
from taskgrad.train import train

PARITY = "tests.test_train:Parity"  # a task by import path: no registration needed


class Parity(Task):
    """Test-only: reward 1 when the first character's code is even, so that even an untrained
    model gets rewards of about 1/2 and every group has non-zero advantages."""

    name = "parity"

    def generate(self, rng):
        return Sample(self.name, f"{rng.randint(0, 99)}?", "0")

    def reward(self, sample, completion):
        return Reward(float(bool(completion) and ord(completion[0]) % 2 == 0))


SMALL = [
    "steps=4",
    "rollout.prompts_per_task=2",
    "rollout.group_size=4",
    "rollout.max_new_tokens=6",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_layers=2",
    "model.tiny.num_heads=2",
    "model.tiny.num_kv_heads=1",
    "model.tiny.warmstart_steps=30",
    "model.tiny.warmstart_batch=16",
    "eval.every=2",
    "eval.size=8",
    "diagnostics.probe_every=2",
    "diagnostics.probe_size=4",
    "diagnostics.probe_samples=2",
    "diagnostics.gain_window=1",
    "checkpoint_every=2",
    "keep_checkpoints=3",
    "optim.lr=1e-3",
    "progress=false",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def records(run_dir):
    """The step records, resume markers applied (taskgrad.rundir.read_records)."""
    return read_records(run_dir / "metrics.jsonl")


@pytest.mark.slow
def test_cli_default_tasks_smoke(tmp_path, cache):
    """`taskgrad train` with the default tasks: run dir complete, parameters changed."""
    run_dir = tmp_path / "run"
    args = [
        *SMALL,
        "model.tiny.warmstart_steps=300",  # enough for some reward, so some groups have signal
        "model.tiny.warmstart_batch=32",
        f"model.cache_dir={cache}",
        "diagnostics.transfer_at=[2]",
        "diagnostics.one_step_at=[3]",
    ]
    cmd = [
        sys.executable,
        "-m",
        "taskgrad.cli",
        "train",
        *args,
        "--run-dir",
        str(run_dir),
        "--report",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "held-out acc start" in out.stdout
    for name in ("config.yaml", "versions.json", "metrics.jsonl", "summary.json", "report.html"):
        assert (run_dir / name).exists(), name
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert [t["name"] for t in cfg["tasks"]] == ["code", "countdown", "table_qa"]
    versions = json.loads((run_dir / "versions.json").read_text())
    assert versions["torch"] == torch.__version__
    recs = records(run_dir)
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4]
    for task in cfg["tasks"]:
        name = task["name"]
        assert 0.0 <= recs[1][f"task/{name}/reward"] <= 1.0
        for key in ("sqnorm_unbiased", "sqnorm_naive", "update_share", "precond_share"):
            assert f"grad/full/{name}/{key}" in recs[1]
        assert f"eval/{name}/accuracy" in recs[0] and f"eval/{name}/accuracy" in recs[4]
        assert f"gain/{name}/probe" in recs[2] and f"gain/{name}/one_step" in recs[3]
        assert f"transfer/code__{name}" in recs[2]
    # Update shares sum to one wherever the step had a gradient (all-equal rewards give none).
    live = [r for r in recs[1:] if (r.get("grad/full/total_sqnorm") or 0) > 0]
    assert live, "no step had a non-zero gradient"
    for r in live:
        shares = [r[f"grad/full/{t['name']}/update_share"] for t in cfg["tasks"]]
        assert sum(shares) == pytest.approx(1.0, abs=1e-6)
    # AdamW's applied update split by task: on every step that moved the parameters (a step
    # whose groups all have equal rewards applies only what momentum carries, or nothing)
    moved = [r for r in recs[1:] if "grad/full/decay_share" in r]
    assert moved and all(f"grad/full/{t['name']}/applied_share" in r
                         for r in moved for t in cfg["tasks"])  # fmt: skip
    # parameters changed: the checkpoint differs from the warm-started model it started from
    ckpt = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    start = load_file(f"{versions['model_path']}/model.safetensors")
    end = load_file(f"{ckpt}/model.safetensors")
    changed = [k for k in start if not torch.equal(start[k], end[k])]
    assert len(changed) > len(start) // 2


def test_cli_bad_config_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "taskgrad.cli", "train", "optim.lrr=1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: config: unknown key 'optim.lrr'; valid: lr, weight_decay, betas, eps, "
        "max_grad_norm, schedule, warmup_steps, max_skipped_steps"
    )


def test_cli_malformed_dataset_is_one_line(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{not json\n')
    task = f"tasks=[{{name: mine, type: dataset, options: {{path: '{bad}', reward: exact}}}}]"
    cmd = [sys.executable, "-m", "taskgrad.cli", "train", task, f"runs_root={tmp_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "rows.jsonl:2" in lines[0], out.stderr


def _without_time(recs):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in recs]


@pytest.mark.slow
def test_resume_after_interruption_repeats_the_uninterrupted_run(tmp_path, cache, monkeypatch):
    overrides = [*SMALL, f"model.cache_dir={cache}", "tasks=arithmetic,table_qa"]
    cfg = load_config(None, overrides)
    full = train(cfg, tmp_path / "full")

    import taskgrad.train as loop

    real_step = loop.train_step

    def crashing_step(trainer, step):
        if step == 4:
            raise KeyboardInterrupt("preempted")
        return real_step(trainer, step)

    monkeypatch.setattr(loop, "train_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, overrides), tmp_path / "cut")
    monkeypatch.setattr(loop, "train_step", real_step)
    cut = tmp_path / "cut"
    assert [r["step"] for r in records(cut)] == [0, 1, 2, 3]  # step 3 logged, checkpoint at 2
    assert train(load_config(None, overrides), cut, resume=True) == cut
    a, b = _without_time(records(full)), _without_time(records(cut))
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for key in ra:
            x, y = ra[key], rb[key]
            if (
                isinstance(x, float)
                and isinstance(y, float)
                and not (math.isnan(x) and math.isnan(y))
            ):
                assert x == pytest.approx(y, rel=1e-5, abs=1e-9), (ra["step"], key)
            else:
                assert x == y, (ra["step"], key)


@pytest.mark.slow
def test_static_weights_silence_a_task_and_sampling_moves_prompts(tmp_path, cache):
    parity = f"tasks=[{{name: left, type: '{PARITY}'}}, {{name: right, type: '{PARITY}'}}]"
    base = [*SMALL, f"model.cache_dir={cache}", parity, "steps=3", "eval.every=0"]
    silenced = [*base, "balance.strategy=static", "balance.options={weights: [1.0, 0.0]}"]
    static = train(load_config(None, silenced), tmp_path / "static")
    for r in records(static):  # no evaluation: the records are steps 1..3
        assert r["task/right/reward_var"] > 0  # both tasks have signal...
        assert r["grad/full/right/sqnorm_naive"] > 0  # ...and are measured...
        assert r["grad/full/right/update_share"] == pytest.approx(0.0, abs=1e-12)  # ...not applied
        assert r["grad/full/left/update_share"] == pytest.approx(1.0, abs=1e-12)
        assert r["balance/right/weight"] == 0.0

    sampled = [*base, "balance.strategy=grad_proportional", "rollout.prompts_per_task=3"]
    recs = records(train(load_config(None, sampled), tmp_path / "prop"))
    assert [r["task/left/prompts"] + r["task/right/prompts"] for r in recs] == [6, 6, 6]
    for before, after in itertools.pairwise(recs):
        probs = [before[f"balance/{t}/sampling"] for t in ("left", "right")]
        assert sum(probs) == pytest.approx(1.0)
        # the next batch follows the probabilities: 2 prompts each, 2 more by largest remainder
        expected = 2 + round(2 * probs[0])
        assert after["task/left/prompts"] == expected


@pytest.mark.slow
def test_cli_compare_in_worker_processes_then_reuses(tmp_path, cache):
    base = [*SMALL, f"model.cache_dir={cache}", "tasks=arithmetic,table_qa", "steps=2"]
    cmd = [
        sys.executable,
        "-m",
        "taskgrad.cli",
        "compare",
        "--strategies",
        "uniform,static",
        "--static-weights",
        "2,1",
        "--seeds",
        "1",
        "--jobs",
        "2",
        "--out",
        str(tmp_path),
        *base,
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    for name in ("uniform-s0", "static-s0"):
        assert (tmp_path / "runs" / name / "summary.json").exists()
        assert "[" in (tmp_path / "runs" / f"{name}.log").read_text()  # its own log
    table = (tmp_path / "compare.md").read_text()
    assert "`static` weights: [2, 1] (given)." in table
    strategies = table.split("## Strategies")[1].split("\n## ")[0]
    assert [ln.split(" | ")[0] for ln in strategies.splitlines() if ln.startswith("| ") and
            not ln.startswith("| strategy")] == ["| uniform", "| static"]  # fmt: skip
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "reusing 2 finished run(s)" in again.stdout
