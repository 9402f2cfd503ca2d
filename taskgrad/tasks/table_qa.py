"""Table QA (FinQA-like): a numeric question over a small table given as text.

A table of a few labelled values, then a question that needs a lookup and one operation:
``a=3 b=7 c=5; a+c?`` -> ``8``. Questions: the sum or difference of two rows, the max, min,
total or average of all rows, and the ratio of two rows (ratios and averages only where they are
exact with at most two decimals, so the reference answer is exact). The reward is a numeric
match with a relative tolerance, as for FinQA's program answers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from fractions import Fraction

from taskgrad.schema import need
from taskgrad.tasks.answers import format_number, is_short_decimal, numeric_reward
from taskgrad.tasks.base import TASKS, Reward, Sample, Task

LABELS = "abcdefgh"
QUESTIONS = ("add", "sub", "max", "min", "sum", "avg", "ratio")


@TASKS.register("table_qa")
class TableQA(Task):
    """Prompt ``"a=3 b=7 c=5; a+c?"``, answer ``"8"``; ``"a=4 b=10 c=1; b/a?"`` -> ``"2.5"``."""

    name = "table_qa"

    @dataclass
    class Options:
        num_rows: int = 3  # table rows, 2..8
        max_value: int = 20  # values in 1..max_value
        # a subset of add, sub, max, min, sum, avg, ratio
        questions: list[str] = field(default_factory=lambda: list(QUESTIONS))
        # reward tolerance: |got - want| <= max(rel_tol * max(|got|, |want|), abs_tol)
        rel_tol: float = 1e-4
        abs_tol: float = 1e-6

        def check(self, where: str, **_) -> None:
            need(2 <= self.num_rows <= len(LABELS), f"{where}.num_rows", f"2..{len(LABELS)}")
            need(self.max_value >= 2, f"{where}.max_value", ">= 2")
            unknown = set(self.questions) - set(QUESTIONS)
            need(
                bool(self.questions) and not unknown,
                f"{where}.questions",
                f"names from {', '.join(QUESTIONS)}",
            )
            need(self.rel_tol >= 0 and self.abs_tol >= 0, f"{where}.rel_tol", "tolerances >= 0")

    def generate(self, rng: random.Random) -> Sample:
        labels = LABELS[: self.options.num_rows]
        values = {label: rng.randint(1, self.options.max_value) for label in labels}
        table = " ".join(f"{label}={value}" for label, value in values.items())
        for _ in range(1000):
            question, answer = self._question(rng, labels, values)
            if is_short_decimal(answer):
                return Sample(self.name, f"{table}; {question}?", format_number(answer))
        raise RuntimeError("table_qa: could not draw an exact question; allow add/sub/max/min")

    def _question(
        self, rng: random.Random, labels: str, values: dict[str, int]
    ) -> tuple[str, Fraction]:
        kind = rng.choice(self.options.questions)
        x, y = rng.sample(labels, 2)
        if kind == "add":
            return f"{x}+{y}", Fraction(values[x] + values[y])
        if kind == "sub":
            return f"{x}-{y}", Fraction(values[x] - values[y])
        if kind == "ratio":
            return f"{x}/{y}", Fraction(values[x], values[y])
        if kind == "max":
            return "max", Fraction(max(values.values()))
        if kind == "min":
            return "min", Fraction(min(values.values()))
        if kind == "sum":
            return "sum", Fraction(sum(values.values()))
        return "avg", Fraction(sum(values.values()), len(values))

    def reward(self, sample: Sample, completion: str) -> Reward:
        return numeric_reward(
            completion, sample.answer, rel_tol=self.options.rel_tol, abs_tol=self.options.abs_tol
        )
