"""Multi-step arithmetic (the "hard" math task): ``(3+4)*(9-5)-6=`` -> ``22``.

A random expression tree with ``num_ops`` operators over small operands, rendered with the
fewest parentheses and always containing at least one pair, so it cannot be read left to right:
the model must hold intermediate results. Exact integer reward.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from taskgrad.schema import need
from taskgrad.tasks.answers import format_number, numeric_reward
from taskgrad.tasks.base import TASKS, Reward, Sample, Task
from taskgrad.tasks.expressions import random_expression


@TASKS.register("multistep")
class MultiStep(Task):
    """Prompt ``"(3+4)*(9-5)-6="``, answer ``"22"``."""

    name = "multistep"

    @dataclass
    class Options:
        num_ops: int = 3  # operators per expression (>= 2)
        max_operand: int = 9  # operands in 1..max_operand (>= 2)
        ops: str = "+-*"  # a subset of "+-*" with "-", or "+" and "*" (to make parentheses)
        max_abs_answer: int = 999  # redraw expressions with larger results

        def check(self, where: str, **_) -> None:
            need(self.num_ops >= 2, f"{where}.num_ops", ">= 2")
            need(self.max_operand >= 2, f"{where}.max_operand", ">= 2")
            # Parentheses arise from "-" on the right of "-", or "+"/"-" under "*".
            can_nest = "-" in self.ops or ("+" in self.ops and "*" in self.ops)
            ok = can_nest and not set(self.ops) - set("+-*")
            need(ok, f"{where}.ops", "chars of '+-*' with '-', or with '+' and '*'")

    def generate(self, rng: random.Random) -> Sample:
        for _ in range(1000):
            numbers = [
                rng.randint(1, self.options.max_operand) for _ in range(self.options.num_ops + 1)
            ]
            built = random_expression(rng, numbers, self.options.ops)
            if built is None:
                continue
            text, value = built
            if "(" in text and abs(value) <= self.options.max_abs_answer:
                return Sample(self.name, f"{text}=", format_number(value))
        raise RuntimeError("multistep: could not draw an expression; raise max_abs_answer")

    def reward(self, sample: Sample, completion: str) -> Reward:
        return numeric_reward(completion, sample.answer)
