"""Linear equations (the "medium" math task): solve ``3x+4=19;x=`` -> ``5``.

Equations ``a*x+b=c`` or ``a*x-b=c`` with a small coefficient and an integer solution, so the
model must undo two operations (subtract, then divide). Exact integer reward.
"""

from __future__ import annotations

import random

from taskgrad.tasks.answers import numeric_reward
from taskgrad.tasks.base import TASKS, Reward, Sample, Task


@TASKS.register("linear_eq")
class LinearEquation(Task):
    """Prompt ``"3x+4=19;x="``, answer ``"5"``.

    Options: ``max_coef`` (a in 2..max_coef), ``max_solution`` (x in -max_solution..
    max_solution), ``max_offset`` (b in 1..max_offset)."""

    name = "linear_eq"

    def __init__(
        self,
        *,
        max_coef: int = 9,
        max_solution: int = 12,
        max_offset: int = 20,
        name: str | None = None,
        eval_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(name=name, eval_size=eval_size, seed=seed)
        if max_coef < 2 or max_solution < 1 or max_offset < 1:
            raise ValueError("linear_eq: need max_coef >= 2, max_solution >= 1, max_offset >= 1")
        self.max_coef = max_coef
        self.max_solution = max_solution
        self.max_offset = max_offset

    def generate(self, rng: random.Random) -> Sample:
        a = rng.randint(2, self.max_coef)
        x = rng.randint(-self.max_solution, self.max_solution)
        b = rng.randint(1, self.max_offset)
        sign = rng.choice("+-")
        c = a * x + b if sign == "+" else a * x - b
        return Sample(self.name, f"{a}x{sign}{b}={c};x=", str(x))

    def reward(self, sample: Sample, completion: str) -> Reward:
        return numeric_reward(completion, sample.answer)
