"""Arithmetic (the "easy" math task): evaluate a flat expression such as ``23+7*2=`` -> ``37``.

Operands are small integers joined by ``+``, ``-`` and ``*`` with the usual precedence and no
parentheses. The reward is an exact integer match on the last number of the extracted answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from taskgrad.schema import need
from taskgrad.tasks.answers import format_number, numeric_reward
from taskgrad.tasks.base import TASKS, Reward, Sample, Task
from taskgrad.tasks.expressions import evaluate, flat_expression


@TASKS.register("arithmetic")
class Arithmetic(Task):
    """Prompt ``"3+7*2="``, answer ``"17"`` (``"23+7*2="`` -> ``"37"`` with ``max_operand=30``)."""

    name = "arithmetic"

    @dataclass
    class Options:
        num_operands: int = 3  # operands per expression (>= 2)
        max_operand: int = 9  # operands are drawn from 1..max_operand
        ops: str = "+-*"  # the operators used, a subset of "+-*"

        def check(self, where: str, **_) -> None:
            need(self.num_operands >= 2, f"{where}.num_operands", ">= 2")
            need(self.max_operand >= 1, f"{where}.max_operand", ">= 1")
            need(bool(self.ops) and not set(self.ops) - set("+-*"), f"{where}.ops", "chars of +-*")

    def generate(self, rng: random.Random) -> Sample:
        o = self.options
        numbers = [rng.randint(1, o.max_operand) for _ in range(o.num_operands)]
        text = flat_expression(rng, numbers, o.ops)
        answer = format_number(evaluate(text).value)
        return Sample(self.name, f"{text}=", answer)

    def reward(self, sample: Sample, completion: str) -> Reward:
        return numeric_reward(completion, sample.answer)
