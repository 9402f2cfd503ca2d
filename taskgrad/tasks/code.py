"""Code: write a Python expression for ``f(x)`` from a spec, scored by hidden tests in a sandbox.

The spec chains one or two operations from a small grammar (``add 3``, ``mul 3``, ``div 2``
floor division, ``mod 4``, ``max 5``, ``min 5``, ``abs``, ``sq``) applied to ``x`` in order, with
one worked example: ``f(x): mul 3 add 1; f(2)=7:`` -> ``x*3+1``. The completion is the body of
``def f(x): return <completion>``; a completion that defines ``def f`` itself (an LLM's fenced
code block) is used as is. The reward is 1.0 iff ``f`` returns the right value on every hidden
input (never shown in the prompt), run in ``sandbox.run_python`` and compared here, outside it.
Where the sandbox cannot isolate programs (see ``sandbox.check_available``), ``rewards``
raises one line saying why, rather than score with weaker containment.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from taskgrad.schema import need
from taskgrad.tasks.answers import extract_program
from taskgrad.tasks.base import TASKS, Reward, Sample, Task
from taskgrad.tasks.sandbox import DEFAULT_PRELOAD, SandboxJob, outputs_match, run_many
from taskgrad.tasks.sandbox_asserts import check_assert, compile_assert

# Operator precedences of the rendered Python, to parenthesise only where needed.
_ADD, _MUL, _POW, _ATOM = 1, 2, 3, 4


def _wrap(expr: str, prec: int, need: int) -> str:
    return expr if prec >= need else f"({expr})"


# name -> (takes a constant, render(expr, prec, a) -> (expr, prec), apply(value, a) -> value)
_Render = Callable[[str, int, int], tuple[str, int]]
_OPS: dict[str, tuple[bool, _Render, Callable[[int, int], int]]] = {
    "add": (True, lambda e, p, a: (f"{e}+{a}", _ADD), lambda v, a: v + a),
    "sub": (True, lambda e, p, a: (f"{e}-{a}", _ADD), lambda v, a: v - a),
    "mul": (True, lambda e, p, a: (f"{_wrap(e, p, _MUL)}*{a}", _MUL), lambda v, a: v * a),
    "div": (True, lambda e, p, a: (f"{_wrap(e, p, _MUL)}//{a}", _MUL), lambda v, a: v // a),
    "mod": (True, lambda e, p, a: (f"{_wrap(e, p, _MUL)}%{a}", _MUL), lambda v, a: v % a),
    "max": (True, lambda e, p, a: (f"max({e},{a})", _ATOM), lambda v, a: max(v, a)),
    "min": (True, lambda e, p, a: (f"min({e},{a})", _ATOM), lambda v, a: min(v, a)),
    "abs": (False, lambda e, p, a: (f"abs({e})", _ATOM), lambda v, a: abs(v)),
    "sq": (False, lambda e, p, a: (f"{_wrap(e, p, _ATOM)}**2", _POW), lambda v, a: v * v),
}
MAX_ANSWER_CHARS = 12


@TASKS.register("code")
class Code(Task):
    """Prompt ``"f(x): mul 3 add 1; f(2)=7:"``, answer ``"x*3+1"``."""

    name = "code"
    runs_code = True  # type: ignore[assignment]

    @dataclass
    class Options:
        num_ops: int = 2  # operations per spec, 1..num_ops
        max_const: int = 9  # constants in 2..max_const
        num_tests: int = 5  # hidden inputs, 1..15
        timeout_s: float = 1.0  # wall-clock limit per program, seconds
        workers: int = 4  # sandboxes run at once by ``rewards``

        def check(self, where: str, **_) -> None:
            need(self.num_ops >= 1, f"{where}.num_ops", ">= 1")
            need(self.max_const >= 2, f"{where}.max_const", ">= 2")
            need(1 <= self.num_tests <= 15, f"{where}.num_tests", "1..15")
            need(self.timeout_s > 0, f"{where}.timeout_s", "> 0")
            need(self.workers >= 1, f"{where}.workers", ">= 1")

    def generate(self, rng: random.Random) -> Sample:
        for _ in range(1000):
            steps = [self._step(rng) for _ in range(rng.randint(1, self.options.num_ops))]
            expr, prec = "x", _ATOM
            for op, a in steps:
                expr, prec = _OPS[op][1](expr, prec, a)
            xs = rng.sample(range(-7, 9), self.options.num_tests + 1)
            ys = [self._apply(steps, x) for x in xs]
            # Redraw long answers and specs that are constant on the tests (nothing to learn).
            if len(expr) > MAX_ANSWER_CHARS or len(set(ys)) < 2:
                continue
            spec = " ".join(op if a is None else f"{op} {a}" for op, a in steps)
            prompt = f"f(x): {spec}; f({xs[0]})={ys[0]}:"
            meta = {"entry": "f", "inputs": [[x] for x in xs[1:]], "outputs": ys[1:], "asserts": []}
            return Sample(self.name, prompt, expr, meta)
        raise RuntimeError("code: could not draw a program; check the options")

    def _step(self, rng: random.Random) -> tuple[str, int | None]:
        op = rng.choice(list(_OPS))
        takes_const = _OPS[op][0]
        return op, rng.randint(2, self.options.max_const) if takes_const else None

    @staticmethod
    def _apply(steps: list[tuple[str, int | None]], x: int) -> int:
        for op, a in steps:
            x = _OPS[op][2](x, a)
        return x

    def reward(self, sample: Sample, completion: str) -> Reward:
        return self.rewards([sample], [completion])[0]

    def rewards(self, samples: list[Sample], completions: list[str]) -> list[Reward]:
        """Score a batch: identical (program, tests) pairs run once, ``workers`` at a time."""
        return score_programs(
            samples, completions, workers=self.options.workers, timeout_s=self.options.timeout_s
        )


def score_programs(
    samples: list[Sample],
    completions: list[str],
    *,
    workers: int = 4,
    timeout_s: float = 1.0,
    preload: Sequence[str] = DEFAULT_PRELOAD,
) -> list[Reward]:
    """Rewards for programs against the hidden tests in each sample's meta: ``entry`` (function
    name), ``inputs`` (argument lists), ``outputs`` (expected returns, compared here with
    ``same_value``) and ``asserts`` (assert statements; their calls of ``entry`` run in the
    sandbox, the rest is evaluated here by ``sandbox_asserts``, never inside the sandbox).

    1.0 iff every call returns its expected output and every assert holds. Metrics:
    ``format_ok`` (the program ran and each call returned or raised), ``tests_passed``
    (fraction). Raises RuntimeError (one line) where the sandbox cannot isolate programs."""
    programs = [
        extract_program(c, entry=s.meta.get("entry", "f"))
        for s, c in zip(samples, completions, strict=True)
    ]
    jobs, plans = [], []
    for program, s in zip(programs, samples, strict=True):
        if program is None:
            continue
        entry = s.meta.get("entry", "f")
        # A malformed assert is a bad dataset (parse_tests rejects those at load): raise.
        asserts = [compile_assert(source, entry) for source in s.meta.get("asserts", ())]
        inputs = [tuple(args) for args in s.meta["inputs"]]
        plans.append((len(inputs), asserts))
        for compiled in asserts:
            inputs += compiled.calls
        jobs.append(SandboxJob(program, inputs=tuple(inputs), entry=entry))
    results = iter(run_many(jobs, workers=workers, timeout_s=timeout_s, preload=preload))
    plan_of = iter(plans)
    rewards = []
    for program, sample in zip(programs, samples, strict=True):
        if program is None:
            rewards.append(Reward(0.0, {"format_ok": 0.0, "tests_passed": 0.0}))
            continue
        result = next(results)
        n_io, asserts = next(plan_of)
        passed = outputs_match(result, sample.meta["outputs"])
        outcomes = result.result["outputs"][n_io:] if result.ok and result.result else []
        for compiled in asserts:
            mine, outcomes = outcomes[: len(compiled.calls)], outcomes[len(compiled.calls) :]
            passed.append(result.ok and check_assert(compiled, mine))
        ok = result.ok and bool(passed) and all(passed)
        rewards.append(
            Reward(
                float(ok),
                {"format_ok": float(result.ok), "tests_passed": sum(passed) / max(len(passed), 1)},
            )
        )
    return rewards
