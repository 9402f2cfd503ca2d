"""The run directory: the one place a run writes to, and the only thing reports read.

runs/<name>/
  config.yaml        the resolved config (re-runnable with `taskgrad train --config`)
  versions.json      python, torch, transformers, accelerate, taskgrad, device, model path
  metrics.jsonl      one JSON record per step (step 0: initial evaluation), flat keys
  evals.jsonl        per evaluation and task, each held-out prompt's outcome (1 correct, 0 not):
                     {"step": 75, "task": "code", "correct": "0110..."}, prompts in eval_set order
  summary.json       final numbers (written when the run finishes)
  checkpoints/step_000040/   model + tokenizer (save_pretrained) and trainer.pt
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from taskgrad.config import Config, from_dict, to_dict
from taskgrad.metrics import clean
from taskgrad.summary import summarize

CHECKPOINTS = "checkpoints"


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.evals_path = self.path / "evals.jsonl"

    # -- creation / resume ---------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: Config, path: Path | None = None) -> RunDir:
        if path is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            name = cfg.run_name or f"{stamp}-{cfg.preset}-s{cfg.seed}"
            path = Path(cfg.runs_root) / name
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(f"run directory {path} is not empty; use --resume to continue it")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        (path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return run

    @staticmethod
    def load_config(path: Path) -> Config:
        data = yaml.safe_load((Path(path) / "config.yaml").read_text())
        return from_dict(Config, data)

    def write_versions(self, extra: dict[str, Any]) -> None:
        import accelerate
        import transformers

        import taskgrad

        info = {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "accelerate": accelerate.__version__,
            "taskgrad": taskgrad.__version__,
            "cuda": torch.version.cuda,
            "command": sys.argv,
            **extra,
        }
        (self.path / "versions.json").write_text(json.dumps(info, indent=2))

    # -- metrics -------------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: clean(v) for k, v in record.items()})
        with self.metrics_path.open("a") as f:
            f.write(line + "\n")

    def log_eval(self, step: int, outcomes: dict[str, list[int]], samples: int = 1) -> None:
        """Per-prompt held-out outcomes of one evaluation, a line per task: for each prompt, how
        many of its ``samples`` completions were correct (one digit)."""
        lines = [
            json.dumps(
                {"step": step, "task": t, "samples": samples, "correct": "".join(map(str, c))}
            )
            for t, c in outcomes.items()
        ]
        with self.evals_path.open("a") as f:
            f.write("".join(line + "\n" for line in lines))

    def records(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def truncate_metrics(self, last_step: int) -> list[dict[str, Any]]:
        """Drop records after ``last_step`` (written after the checkpoint a resume starts from)."""
        kept = [r for r in self.records() if r["step"] <= last_step]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return kept

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        root = self.path / CHECKPOINTS
        return sorted(root.glob("step_*")) if root.exists() else []

    def save_checkpoint(
        self, step: int, model, tokenizer, state: dict[str, Any], keep: int
    ) -> Path:
        """Write ``checkpoints/step_<step>`` (weights, tokenizer, ``trainer.pt`` = ``state``)
        atomically; keep the ``keep`` most recent checkpoints."""
        target = self.path / CHECKPOINTS / f"step_{step:06d}"
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / "trainer.pt")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)  # complete checkpoints only: the rename is the commit point
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def finish(self, tasks: list[str]) -> None:
        summary = summarize(self.records(), tasks)
        (self.path / "summary.json").write_text(json.dumps(clean(summary), indent=2))
