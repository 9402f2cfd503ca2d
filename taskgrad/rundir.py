"""The run directory: the one place a run writes to, and the only thing reports read.

runs/<name>/
  config.yaml        the resolved config (re-runnable with `taskgrad train --config`)
  versions.json      python, torch, transformers, accelerate, taskgrad, device, model path
  metrics.jsonl      one JSON record per step (step 0: initial evaluation), flat keys
  summary.json       final numbers (written when the run finishes)
  checkpoints/step_000040/   model + tokenizer (save_pretrained) and trainer.pt
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from taskgrad.config import Config, from_dict, to_dict

CHECKPOINTS = "checkpoints"


def _clean(value: Any) -> Any:
    """JSON has no NaN: undefined estimates are written as null (in nested values too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"

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
        line = json.dumps({k: _clean(v) for k, v in record.items()})
        with self.metrics_path.open("a") as f:
            f.write(line + "\n")

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

    def save_checkpoint(self, trainer, step: int) -> Path:
        target = self.path / CHECKPOINTS / f"step_{step:06d}"
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(tmp)
        trainer.tokenizer.save_pretrained(tmp)
        state = {
            "step": step,
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "history": dict(trainer.history),
            "probe_last": trainer.probe_last,
            "strategy": trainer.strategy.state_dict(),
            "sampling": trainer.sampling,
            "task_weights": trainer.task_weights,
        }
        torch.save(state, tmp / "trainer.pt")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)  # complete checkpoints only: the rename is the commit point
        for old in self.checkpoints()[: -trainer.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def finish(self, trainer) -> None:
        from taskgrad.diagnostics import summarize

        summary = summarize(self.records(), [t.name for t in trainer.tasks])
        (self.path / "summary.json").write_text(json.dumps(_clean(summary), indent=2))
