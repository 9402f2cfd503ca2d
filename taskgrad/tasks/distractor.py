"""A distractor: a task whose reward ignores the completion (a positive control).

Each completion's reward is a fair coin, drawn from a seed of the prompt and the completion's
position in the scored batch, never from its text: the policy cannot change its expected reward,
so its expected policy gradient is exactly zero, while its sampled gradient is as large as any
task's (rewards of 0 and 1 give full-size advantages). Under the plain mix it adds pure noise to
every update; the oracle weight is 0 (static). Its accuracy is noise: give it ``scored: false`` so
it stays out of the accuracy endpoints.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from taskgrad.schema import need
from taskgrad.tasks.base import TASKS, Reward, Sample, Task, _stable_seed


@TASKS.register("distractor")
class Distractor(Task):
    """Prompt ``"echo 4 7 1:"`` (digits to copy, so the policy has something to write), reward a
    fair coin that does not depend on what it wrote."""

    name = "distractor"
    verifiable = False

    @dataclass
    class Options:
        length: int = 3  # digits in the prompt
        p: float = 0.5  # probability of reward 1

        def check(self, where: str, **_: Any) -> None:
            need(1 <= self.length <= 12, f"{where}.length", f"1..12, got {self.length}")
            need(0 < self.p < 1, f"{where}.p", f"0 < p < 1, got {self.p}")

    def generate(self, rng: random.Random) -> Sample:
        digits = " ".join(str(rng.randint(0, 9)) for _ in range(self.options.length))
        return Sample(self.name, f"echo {digits}:", digits.replace(" ", ""))

    def reward(self, sample: Sample, completion: str) -> Reward:
        return self.rewards([sample], [completion])[0]

    def rewards(self, samples: list[Sample], completions: list[str]) -> list[Reward]:
        """Coin flips seeded by (task seed, prompt, position in the batch): independent of the
        completions, reproducible on resume."""
        out = []
        for i, sample in enumerate(samples):
            coin = random.Random(_stable_seed(self.name, self.seed, sample.prompt, i)).random()
            out.append(Reward(float(coin < self.options.p)))
        return out
