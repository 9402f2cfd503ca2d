"""Countdown: reach a target from given numbers with ``+ - * /``, e.g. ``make 13 from 3 5 2:``.

Each given number may be used at most once (option ``use_all`` makes it exactly once, as in
TinyZero). Checking parses the answer with ``ast`` and computes with exact fractions
(``expressions.evaluate``): only non-negative integer literals, parentheses and the four binary
operators are allowed; unary minus is not (the numbers are given positive and subtraction covers
every use of it), nor names, calls, ``**`` or anything else. Instances are built from a random
expression over a subset of the numbers, so every prompt is solvable; the reference answer is
that expression.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from taskgrad.schema import need
from taskgrad.tasks.answers import extract_answer
from taskgrad.tasks.base import TASKS, Reward, Sample, Task
from taskgrad.tasks.expressions import ExpressionError, evaluate, random_expression

# Ways LLMs write the operators, mapped to Python's.
_OPERATOR_SPELLINGS = {
    "\\times": "*",
    "\\cdot": "*",
    "\\div": "/",
    "×": "*",
    "·": "*",
    "÷": "/",
    "−": "-",
    "\\left": "",
    "\\right": "",
    "$": "",
}


@TASKS.register("countdown")
class Countdown(Task):
    """Prompt ``"make 13 from 3 5 2:"``, answer ``"3*5-2"`` (any valid expression scores 1)."""

    name = "countdown"

    @dataclass
    class Options:
        num_numbers: int = 3  # numbers given in the prompt (>= 2)
        max_number: int = 9  # each in 1..max_number (>= 2)
        max_target: int = 99  # targets in 1..max_target
        use_all: bool = False  # every number must be used exactly once

        def check(self, where: str, **_) -> None:
            need(self.num_numbers >= 2, f"{where}.num_numbers", ">= 2")
            need(self.max_number >= 2, f"{where}.max_number", ">= 2")
            need(self.max_target >= 1, f"{where}.max_target", ">= 1")

    def generate(self, rng: random.Random) -> Sample:
        o = self.options
        for _ in range(1000):
            numbers = [rng.randint(1, o.max_number) for _ in range(o.num_numbers)]
            k = o.num_numbers if o.use_all else rng.randint(2, o.num_numbers)
            used = rng.sample(numbers, k)
            built = random_expression(rng, used, "+-*/")
            if built is None:
                continue
            text, value = built
            # A target equal to a given number would be solved by that number alone.
            if (
                value.denominator == 1
                and 1 <= value <= self.options.max_target
                and value not in numbers
            ):
                target = int(value)
                prompt = f"make {target} from {' '.join(map(str, numbers))}:"
                meta = {"numbers": numbers, "target": target}
                return Sample(self.name, prompt, text, meta)
        raise RuntimeError("countdown: could not draw a solvable instance; check the options")

    def reward(self, sample: Sample, completion: str) -> Reward:
        try:
            return self._score(sample, completion)
        except Exception:  # never let a completion crash training
            return Reward(0.0, {"format_ok": 0.0, "numbers_ok": 0.0})

    def _score(self, sample: Sample, completion: str) -> Reward:
        """Try each side of any "=" in the answer ("3*5-2 = 13" is fine); 1.0 if one side is an
        allowed expression over available numbers whose value is the target."""
        text = extract_answer(completion)
        for spelling, op in _OPERATOR_SPELLINGS.items():
            text = text.replace(spelling, op)
        available = Counter(sample.meta["numbers"])
        format_ok = numbers_ok = False
        for part in text.split("=")[:8]:
            try:
                evaluated = evaluate(part)
            except ExpressionError:
                continue
            format_ok = True
            used = Counter(evaluated.numbers)
            if self.options.use_all and used != available:
                continue
            if used - available:  # a number used more often than given, or not given at all
                continue
            numbers_ok = True
            if evaluated.value == sample.meta["target"]:
                return Reward(1.0, {"format_ok": 1.0, "numbers_ok": 1.0})
        return Reward(0.0, {"format_ok": float(format_ok), "numbers_ok": float(numbers_ok)})
