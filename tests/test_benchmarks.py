"""The GPU check's CPU path (benchmarks/gpu_check.py --tiny): everything but the CUDA lines runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_with_the_tiny_architecture(tmp_path):
    out = tmp_path / "rows.json"
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--backend",
        "transformers", "--steps", "1", "--prompts", "2", "--group", "2", "--max-new", "4",
        "--json", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["mode"], r["scope"]) for r in rows] == [
        ("full", "off"), ("full", "proxy"), ("full", "full"), ("lora", "off"),
        ("lora", "adapters"),
    ]  # fmt: skip
    assert all(r["fits"] and r["rollout_tokens_per_s"] > 0 and r["step_s"] > 0 for r in rows)
    assert "largest model that fits, scope full: tiny" in done.stdout
