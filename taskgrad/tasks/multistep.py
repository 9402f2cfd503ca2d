"""Multi-step arithmetic (the "hard" math task): ``(3+4)*(9-5)-6=`` -> ``22``.

A random expression tree with ``num_ops`` operators over small operands, rendered with the
fewest parentheses and always containing at least one pair, so it cannot be read left to right:
the model must hold intermediate results. Exact integer reward.
"""

from __future__ import annotations

import random

from taskgrad.tasks.answers import format_number, numeric_reward
from taskgrad.tasks.base import TASKS, Reward, Sample, Task
from taskgrad.tasks.expressions import random_expression


@TASKS.register("multistep")
class MultiStep(Task):
    """Prompt ``"(3+4)*(9-5)-6="``, answer ``"22"``.

    Options: ``num_ops`` (operators per expression, >= 2), ``max_operand`` (operands in
    1..max_operand), ``ops`` (a subset of "+-*"), ``max_abs_answer`` (redraw larger results)."""

    name = "multistep"

    def __init__(
        self,
        *,
        num_ops: int = 3,
        max_operand: int = 9,
        ops: str = "+-*",
        max_abs_answer: int = 999,
        name: str | None = None,
        eval_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(name=name, eval_size=eval_size, seed=seed)
        # Parentheses arise from "-" on the right of "-", or "+"/"-" under "*".
        can_nest = "-" in ops or ("+" in ops and "*" in ops)
        if num_ops < 2 or max_operand < 2 or set(ops) - set("+-*") or not can_nest:
            raise ValueError(
                "multistep: need num_ops >= 2, max_operand >= 2, ops from '+-*' with '-' or '+*'"
            )
        self.num_ops = num_ops
        self.max_operand = max_operand
        self.ops = ops
        self.max_abs_answer = max_abs_answer

    def generate(self, rng: random.Random) -> Sample:
        for _ in range(1000):
            numbers = [rng.randint(1, self.max_operand) for _ in range(self.num_ops + 1)]
            built = random_expression(rng, numbers, self.ops)
            if built is None:
                continue
            text, value = built
            if "(" in text and abs(value) <= self.max_abs_answer:
                return Sample(self.name, f"{text}=", format_number(value))
        raise RuntimeError("multistep: could not draw an expression; raise max_abs_answer")

    def reward(self, sample: Sample, completion: str) -> Reward:
        return numeric_reward(completion, sample.answer)
