"""Arithmetic (the "easy" math task): evaluate a flat expression such as ``23+7*2=`` -> ``37``.

Operands are small integers joined by ``+``, ``-`` and ``*`` with the usual precedence and no
parentheses. The reward is an exact integer match on the last number of the extracted answer.
"""

from __future__ import annotations

import random

from taskgrad.tasks.answers import format_number, numeric_reward
from taskgrad.tasks.base import TASKS, Reward, Sample, Task
from taskgrad.tasks.expressions import evaluate, flat_expression


@TASKS.register("arithmetic")
class Arithmetic(Task):
    """Prompt ``"3+7*2="``, answer ``"17"`` (``"23+7*2="`` -> ``"37"`` with ``max_operand=30``).

    Options: ``num_operands`` (operands per expression), ``max_operand`` (operands are drawn
    from 1..max_operand), ``ops`` (a subset of "+-*")."""

    name = "arithmetic"

    def __init__(
        self,
        *,
        num_operands: int = 3,
        max_operand: int = 9,
        ops: str = "+-*",
        name: str | None = None,
        eval_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(name=name, eval_size=eval_size, seed=seed)
        if num_operands < 2 or max_operand < 1 or not ops or set(ops) - set("+-*"):
            raise ValueError("arithmetic: need num_operands >= 2, max_operand >= 1, ops in '+-*'")
        self.num_operands = num_operands
        self.max_operand = max_operand
        self.ops = ops

    def generate(self, rng: random.Random) -> Sample:
        numbers = [rng.randint(1, self.max_operand) for _ in range(self.num_operands)]
        text = flat_expression(rng, numbers, self.ops)
        answer = format_number(evaluate(text).value)
        return Sample(self.name, f"{text}=", answer)

    def reward(self, sample: Sample, completion: str) -> Reward:
        return numeric_reward(completion, sample.answer)
