"""Linear equations (the "medium" math task): solve ``3x+4=19;x=`` -> ``5``.

Equations ``a*x+b=c`` or ``a*x-b=c`` with a small coefficient and an integer solution, so the
model must undo two operations (subtract, then divide). Exact integer reward.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from taskgrad.schema import need
from taskgrad.tasks.answers import numeric_reward
from taskgrad.tasks.base import TASKS, Reward, Sample, Task


@TASKS.register("linear_eq")
class LinearEquation(Task):
    """Prompt ``"3x+4=19;x="``, answer ``"5"``."""

    name = "linear_eq"

    @dataclass
    class Options:
        max_coef: int = 9  # a in 2..max_coef
        max_solution: int = 12  # x in -max_solution..max_solution
        max_offset: int = 20  # b in 1..max_offset

        def check(self, where: str, **_) -> None:
            need(self.max_coef >= 2, f"{where}.max_coef", ">= 2")
            need(self.max_solution >= 1, f"{where}.max_solution", ">= 1")
            need(self.max_offset >= 1, f"{where}.max_offset", ">= 1")

    def generate(self, rng: random.Random) -> Sample:
        a = rng.randint(2, self.options.max_coef)
        x = rng.randint(-self.options.max_solution, self.options.max_solution)
        b = rng.randint(1, self.options.max_offset)
        sign = rng.choice("+-")
        c = a * x + b if sign == "+" else a * x - b
        return Sample(self.name, f"{a}x{sign}{b}={c};x=", str(x))

    def reward(self, sample: Sample, completion: str) -> Reward:
        return numeric_reward(completion, sample.answer)
