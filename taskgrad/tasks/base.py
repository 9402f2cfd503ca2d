"""What a task is: prompt generation, a 0/1 verifiable reward, a fixed held-out set.

Every ``Sample`` carries its task name, so grouping a batch by task is a groupby, never a guess.
A task is one file in this package: a ``Task`` subclass registered with ``@TASKS.register``,
with its options as a nested ``Options`` dataclass (validated like the config). Out-of-tree
tasks are named in the config by import path: ``type: mypackage.tasks:MyTask``.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from taskgrad.registry import NoOptions, Registry, parse_options


@dataclass(frozen=True)
class Sample:
    """One prompt of one task.

    ``prompt`` is plain text without any chat template (the policy applies one when the tokenizer
    has it); ``answer`` is the reference answer; ``meta`` holds what the reward needs beyond it
    (hidden tests, the numbers of a countdown, a tolerance...). Everything is JSON-serialisable.
    """

    task: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Reward:
    """A verifiable reward: ``value`` is 0.0 or 1.0; ``metrics`` are optional components in [0, 1]
    (e.g. ``format_ok``) that are logged as ``task/<name>/<metric>`` means."""

    value: float
    metrics: dict[str, float] = field(default_factory=dict)


class Task(ABC):
    """Base class of every task. Subclasses set ``name`` and implement ``generate`` and ``reward``.

    A task is deterministic given its seed: ``eval_set()`` is fixed and disjoint from the prompts
    ``sample()`` returns for training. Options come as a parsed ``Options`` instance, or as
    keyword arguments (``Code(num_ops=1)``), parsed and checked the same way.
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    # the reward checks the completion (a reference answer scores 1, a wrong one 0); False for a
    # control whose reward ignores it (distractor); the property tests read this
    verifiable: ClassVar[bool] = True

    @property
    def runs_code(self) -> bool:
        """Whether its reward runs model output in the sandbox (checked at startup)."""
        return False

    def __init__(
        self,
        options: Any = None,
        *,
        name: str | None = None,
        eval_size: int = 64,
        seed: int = 0,
        eval_split: str = "test",
        **kwargs: Any,
    ) -> None:
        if name is not None:  # e.g. the dataset task is registered once, instantiated per dataset
            self.name = name
        if options is None:
            options = parse_options(type(self), kwargs, f"task {self.name!r} options")
        elif kwargs:
            raise TypeError("pass options either as an Options instance or as keywords")
        self.options = options
        self.eval_size = eval_size
        self.eval_split = eval_split  # "test", or "tune": a held-out set disjoint from test
        self.seed = seed
        self._eval: list[Sample] | None = None
        self._eval_prompts: set[str] = set()

    # -- to implement --------------------------------------------------------------------------
    @abstractmethod
    def generate(self, rng: random.Random) -> Sample:
        """Draw one sample from the task's distribution using ``rng`` only."""

    @abstractmethod
    def reward(self, sample: Sample, completion: str) -> Reward:
        """Score one completion; must never raise on any string (model output is hostile)."""

    # -- provided ------------------------------------------------------------------------------
    def rewards(self, samples: list[Sample], completions: list[str]) -> list[Reward]:
        """Score a batch; tasks with expensive verifiers (code) override this to parallelise."""
        return [self.reward(s, c) for s, c in zip(samples, completions, strict=True)]

    def demonstration(self, sample: Sample) -> str:
        """The completion a supervised warm-start imitates (default: the reference answer)."""
        return sample.answer

    def eval_set(self) -> list[Sample]:
        """The fixed held-out set: up to ``eval_size`` distinct prompts, the same for every seed.

        Drawn from a seed of the task's own (its name), so runs with different seeds are scored
        on the same prompts and their differences pair. The set never takes more than half of a
        small prompt space: where ``40 * eval_size`` draws find hardly any new prompt in their
        last quarter (under 1%), the space counts as exhausted and the held-out set is capped at
        half the distinct prompts seen, leaving the rest to train on. With ``eval_split="tune"``
        it is a second set, disjoint from the test set (for tuning baselines without seeing the
        test prompts), drawn from its own seed likewise.
        """
        if self._eval is None:
            test = self._held_out("eval", exclude=set())
            if self.eval_split == "tune":
                self._eval = self._held_out("tune", exclude={s.prompt for s in test})
            else:
                self._eval = test
            self._eval_prompts = {s.prompt for s in self._eval}
        return self._eval

    def _held_out(self, stream: str, exclude: set[str]) -> list[Sample]:
        """Up to eval_size distinct prompts outside ``exclude`` from the named seed stream, at
        most half of what remains of an exhausted prompt space."""
        rng = random.Random(_stable_seed(self.name, stream))
        draws = [s for s in (self.generate(rng) for _ in range(40 * self.eval_size))
                 if s.prompt not in exclude]  # fmt: skip
        distinct = list({s.prompt: s for s in draws}.values())  # first draw of each prompt
        early = {s.prompt for s in draws[: 3 * len(draws) // 4]}
        new_late = sum(1 for s in distinct if s.prompt not in early)
        size = self.eval_size
        if new_late < 0.01 * max(len(draws) // 4, 1):  # the space is (nearly) exhausted
            size = min(size, len(distinct) // 2)
        return distinct[:size]

    def held_out_prompts(self) -> set[str]:
        """Every prompt of both held-out sets, test and tune, whichever this task scores on: what
        a warm start must never see (its model is shared by test and tuning runs)."""
        test = self._held_out("eval", exclude=set())
        test_prompts = {s.prompt for s in test}
        return test_prompts | {s.prompt for s in self._held_out("tune", exclude=test_prompts)}

    def sample(self, rng: random.Random, avoid: set[str] | None = None) -> Sample:
        """A training sample that is never one of the held-out prompts (``avoid``: these
        prompts instead, e.g. ``held_out_prompts()``)."""
        self.eval_set()
        avoid = self._eval_prompts if avoid is None else avoid
        for _ in range(1000):
            s = self.generate(rng)
            if s.prompt not in avoid:
                return s
        raise RuntimeError(f"task {self.name!r}: could not draw a prompt outside the eval set")


def _stable_seed(*parts: object) -> int:
    """A seed that is the same in every process (``hash()`` of a str is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


TASKS: Registry[type[Task]] = Registry("task", "taskgrad.tasks", Task)


def build_tasks(
    specs: list[Any], *, eval_size: int, seed: int, eval_split: str = "test"
) -> list[Task]:
    """One task instance per config ``TaskSpec`` (name, type, options), options validated."""
    tasks = []
    for i, spec in enumerate(specs):
        cls = TASKS.get(spec.type or spec.name)
        options = parse_options(cls, spec.options, f"tasks[{i}].options")
        tasks.append(
            cls(options, name=spec.name, eval_size=eval_size, seed=seed, eval_split=eval_split)
        )
    return tasks
