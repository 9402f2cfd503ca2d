"""Instantiating the configured tasks by registered name."""

from __future__ import annotations

from taskgrad.config import ConfigError, TaskSpec
from taskgrad.tasks import TASKS, Task


def build_tasks(specs: list[TaskSpec], *, eval_size: int, seed: int) -> list[Task]:
    """One task instance per spec; bad options raise a one-line ``ConfigError`` naming the task."""
    tasks = []
    for i, spec in enumerate(specs):
        cls = TASKS.get(spec.type or spec.name)
        try:
            tasks.append(cls(name=spec.name, eval_size=eval_size, seed=seed, **spec.options))
        except TypeError as e:
            raise ConfigError(f"tasks[{i}].options: {e}") from None
    return tasks
