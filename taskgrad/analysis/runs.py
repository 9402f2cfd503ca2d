"""Run directories as data: load them, group runs of one configuration, label what differs.

A run directory holds ``config.yaml``, ``metrics.jsonl`` (one flat record per step; ``null`` where
a metric is undefined), ``evals.jsonl`` (each held-out prompt's outcome per evaluation),
``summary.json`` and ``versions.json`` (see taskgrad/rundir.py). Reports read nothing else.

Runs whose configs are identical apart from the keys in ``PLUMBING`` (seed, names, paths,
checkpointing, progress bar) form one ``Group``: its seeds are aggregated. Groups are labelled by
the config keys whose values differ between groups.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from taskgrad import metrics as M

# Keys that do not change what is computed: runs that differ only in these are seeds of one config.
PLUMBING = frozenset(
    {
        "seed",
        "run_name",
        "runs_root",
        "progress",
        "checkpoint_every",
        "keep_checkpoints",
        "checkpoint_minutes",
        "optim.max_skipped_steps",  # changes nothing unless the run stops on non-finite steps
        "model.cache_dir",
    }
)


def read_metrics(path: Path) -> pd.DataFrame:
    """metrics.jsonl as a float frame indexed by step; null and absent values become NaN.

    Resume markers and torn lines are resolved by ``taskgrad.rundir.read_records``.
    """
    from taskgrad.rundir import read_records

    records = read_records(path)
    if not records:
        return pd.DataFrame(index=pd.Index([], name="step", dtype=int))
    frame = pd.DataFrame.from_records(records)
    frame = frame.apply(pd.to_numeric, errors="coerce").astype(float)
    frame["step"] = frame["step"].astype(int)
    frame = frame.drop_duplicates("step", keep="last").set_index("step").sort_index()
    return frame


def read_evals(path: Path) -> dict[int, dict[str, np.ndarray]]:
    """evals.jsonl as step -> task -> per-prompt outcomes [n_prompts] (the share of the prompt's
    completions that were correct: 0 or 1 for greedy, j/k for avg@k; in the task's eval_set
    order); {} if the file is absent. Resume markers and torn lines are resolved by
    ``taskgrad.rundir.read_records``; a repeated (step, task) line: the last one wins."""
    from taskgrad.rundir import read_records

    out: dict[int, dict[str, np.ndarray]] = {}
    for rec in read_records(path):
        k = int(rec.get("samples", 1))
        counts = np.frombuffer(rec["correct"].encode("ascii"), dtype=np.uint8) - ord("0")
        if counts.size and counts.max() > k:
            raise ValueError(f"{path}: step {rec['step']} {rec['task']}: outcomes must be 0..{k}")
        out.setdefault(int(rec["step"]), {})[rec["task"]] = counts / k
    return dict(sorted(out.items()))


@dataclass
class Run:
    """One run directory, read."""

    path: Path
    config: dict[str, Any]
    metrics: pd.DataFrame  # index: step; columns: metric keys (float, NaN where undefined)
    summary: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return [t["name"] for t in self.config.get("tasks", [])]

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def steps(self) -> int:
        """Training steps actually logged (the configured number if the run finished)."""
        logged = [s for s in self.metrics.index if s > 0]
        return max(logged) if logged else 0

    def cfg(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key, e.g. ``diagnostics.gain_window``."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def has(self, key: str) -> bool:
        return key in self.metrics and bool(self.metrics[key].notna().any())

    def column(self, key: str) -> pd.Series:
        """One metric over steps (all NaN if never logged)."""
        if key in self.metrics:
            return self.metrics[key]
        return pd.Series(np.nan, index=self.metrics.index, name=key)

    @property
    def scored_tasks(self) -> list[str]:
        """The tasks that count in the accuracy endpoints (``scored``; a distractor does not)."""
        return [t["name"] for t in self.config.get("tasks", []) if t.get("scored", True)]

    def heldout(self) -> pd.DataFrame:
        """Held-out accuracy [n_evals, K]: rows are the evaluated steps (step 0 included) where
        every task was evaluated, columns the scored tasks."""
        frame = self.task_frame(M.eval_key("{task}"), steps="all")[self.scored_tasks]
        return frame.dropna(how="any")

    def outcomes(self) -> dict[int, dict[str, np.ndarray]]:
        """Per-prompt held-out outcomes, step -> task -> [n_prompts] (read from evals.jsonl on
        each call; {} for runs written before it existed)."""
        return read_evals(self.path / "evals.jsonl")

    def task_frame(self, pattern: str, steps: str = "train") -> pd.DataFrame:
        """Columns = tasks, from keys ``pattern.format(task=...)``; rows = steps.

        ``steps="train"`` drops step 0 (the initial evaluation), ``"all"`` keeps it.
        """
        frame = pd.DataFrame({t: self.column(pattern.format(task=t)) for t in self.tasks})
        return frame[frame.index > 0] if steps == "train" else frame


def eval_metric(runs: list[Run]) -> str:
    """What "held-out accuracy" is in these runs, for captions: greedy or avg@k (eval.samples)."""
    ks = sorted({int(r.cfg("eval.samples", 0) or 0) for r in runs})
    names = ["greedy" if k == 0 else f"avg@{k}" for k in ks]
    return names[0] if len(names) == 1 else " or ".join(names) + " (differs between runs)"


def load_run(path: str | Path) -> Run:
    """Read a run directory; config.yaml and metrics.jsonl are required."""
    path = Path(path)
    for name in ("config.yaml", "metrics.jsonl"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path}: no {name} (is this a run directory?)")
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    extra = {}
    for name in ("summary.json", "versions.json"):
        f = path / name
        # summary.json has NaN literals (json.dumps writes them); json.loads reads them back.
        extra[name] = json.loads(f.read_text()) if f.exists() else {}
    return Run(path, config, read_metrics(path / "metrics.jsonl"), *extra.values())


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b": value}. The task list becomes its names ("tasks") plus one entry
    per task field ("tasks.<name>.options.<key>", "tasks.<name>.weight", ...), so that lists
    with the same names but other options are told apart, and labels name what differs."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if key == "tasks" and not prefix and isinstance(value, list):
            out[name] = ",".join(str(t.get("name", "?")) for t in value)
            for t in value:
                fields = {k: v for k, v in t.items() if k != "name"}
                out.update(flatten(fields, f"tasks.{t.get('name', '?')}."))
        elif isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else _hashable(value)
    return out


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


@dataclass
class Group:
    """Runs of one configuration (seeds), and the label that tells it from other groups."""

    runs: list[Run]
    label: str = ""

    @property
    def config(self) -> dict[str, Any]:
        return self.runs[0].config

    @property
    def tasks(self) -> list[str]:
        return self.runs[0].tasks

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def cfg(self, dotted: str, default: Any = None) -> Any:
        return self.runs[0].cfg(dotted, default)

    def has(self, key: str) -> bool:
        return any(r.has(key) for r in self.runs)

    def has_task_key(self, pattern: str) -> bool:
        return any(self.has(pattern.format(task=t)) for t in self.tasks)

    def stack(self, key: str) -> pd.DataFrame:
        """One metric, columns = seeds' runs (by position), rows = the union of steps."""
        return pd.concat([r.column(key).rename(i) for i, r in enumerate(self.runs)], axis=1)


def config_key(config: dict[str, Any]) -> str:
    flat = {k: v for k, v in flatten(config).items() if k not in PLUMBING}
    return json.dumps(flat, sort_keys=True, default=str)


def group_runs(runs: list[Run]) -> list[Group]:
    """Group runs by configuration (order of first appearance; runs sorted by seed)."""
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(config_key(run.config), []).append(run)
    groups = [Group(sorted(rs, key=lambda r: (r.seed, str(r.path)))) for rs in by_key.values()]
    label_groups(groups)
    return groups


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def label_groups(groups: list[Group]) -> None:
    """Label each group by the config keys that differ between groups.

    A key's value is left out of a label when it is the one most groups share (a unique most
    common value, held by two groups or more), so variants read as departures from the
    baseline: ``grpo.loss_agg=seq_mean``.
    The preset name stands in for the task list when both differ, and a group labelled by its
    task names is not labelled by its tasks' options too.
    """
    flats = [{k: v for k, v in flatten(g.config).items() if k not in PLUMBING} for g in groups]
    keys = sorted({k for f in flats for k in f})
    differing = [k for k in keys if len({_fmt(f.get(k)) for f in flats}) > 1]
    if "preset" in differing and "tasks" in differing:  # the preset names the task list
        differing = [k for k in differing if k != "tasks" and not k.startswith("tasks.")]
    for group, flat in zip(groups, flats, strict=True):
        parts = []
        for key in differing:
            top = Counter(_fmt(f.get(key)) for f in flats).most_common(2)
            unique_mode = top[0][1] >= 2 and (len(top) == 1 or top[1][1] < top[0][1])
            if unique_mode and _fmt(flat.get(key)) == top[0][0]:
                continue
            if key.startswith("tasks.") and any(p.startswith("tasks=") for p in parts):
                continue
            parts.append(f"{key}={_fmt(flat.get(key))}")
        group.label = ", ".join(parts) or f"preset={group.cfg('preset', 'default')}"
