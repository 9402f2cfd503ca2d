"""A task backed by rows of a dataset: local JSONL / JSON / Parquet files or a Hugging Face id.

One class, instantiated once per dataset by config, e.g.
``{name: finqa, type: dataset, options: {path: data/finqa.jsonl, reward: numeric}}``; the
instance's ``name`` (here "finqa") names its metrics and, with ``task_field``, selects its rows
from a mixed file. Rows need a prompt and a reference answer; code rows need tests.

Rewards (option ``reward``):

* ``math``: math-verify equivalence of the extracted answer and the reference (``\\frac{1}{2}``
  matches ``\\boxed{0.5}``); needs ``pip install math-verify``;
* ``numeric``: last number of the extracted answer within ``rel_tol`` / ``abs_tol``;
* ``exact``: the extracted answer equals the reference after collapsing whitespace;
* ``code``: the program passes the row's tests in the sandbox. Accepted ``tests`` (a list, or a
  JSON string of one), items of either form:

  - ``{"input": [arg, ...], "output": value}``: ``entry_point(*input) == output``, compared
    outside the sandbox. ``input`` is always the list of positional arguments (one list
    argument is ``[[1, 2]]``);
  - ``"assert f(2) == 7"``: when of exactly this form (a call with literal arguments equal to a
    literal) it becomes an input/output pair on that function. Other asserts are checked in the
    trainer, never inside the sandbox: their calls of the function (literal arguments only) run
    in the sandbox, and the rest of the assert is evaluated on the returned values by
    ``sandbox_asserts`` (comparisons, arithmetic, ``abs``/``len``/``sorted``/``set``/
    ``math.isclose``..., see there). An assert beyond that is rejected at load time with a
    one-line error naming the file, row and test.

The held-out set is ``eval_size`` distinct prompts (or ``eval_fraction`` of them), chosen by a
seeded shuffle; training draws only rows whose prompt is not held out.
"""

from __future__ import annotations

import ast
import json
import os
import random
from dataclasses import dataclass
from typing import Any, Literal

from taskgrad.schema import need
from taskgrad.tasks.answers import extract_answer, math_reward, numeric_reward
from taskgrad.tasks.base import TASKS, Reward, Sample, Task, _stable_seed
from taskgrad.tasks.code import score_programs
from taskgrad.tasks.sandbox import STDLIB_PRELOAD, is_plain
from taskgrad.tasks.sandbox_asserts import AssertFormError, compile_assert

LOCAL_EXTENSIONS = (".jsonl", ".ndjson", ".json", ".parquet")


@TASKS.register("dataset")
class Dataset(Task):
    """Rows of a dataset as a task (see the module docstring)."""

    name = "dataset"

    @dataclass
    class Options:
        path: str = ""  # a JSONL / JSON / Parquet file, or a Hugging Face dataset id
        split: str = "train"  # hub datasets only
        subset: str | None = None  # hub datasets only
        prompt_field: str = "prompt"
        answer_field: str = "answer"
        tests_field: str = "tests"  # code rows
        task_field: str | None = None  # keep rows whose column equals this task's name
        reward: Literal["math", "numeric", "exact", "code"] = "math"
        eval_fraction: float | None = None  # held-out share of the prompts; overrides eval_size
        rel_tol: float = 1e-4  # numeric reward tolerance (relative)
        abs_tol: float = 1e-6  # numeric reward tolerance (absolute)
        entry_point: str = "f"  # function name of input/output tests (code)
        # seconds per completion: the sandbox's wall clock (code), math-verify's limit (math)
        timeout_s: float = 3.0
        workers: int = 4  # sandboxes at once (code)

        def check(self, where: str, **_) -> None:
            need(bool(self.path), f"{where}.path", "a file or dataset id (the dataset task)")
            need(
                self.eval_fraction is None or 0 <= self.eval_fraction < 1,
                f"{where}.eval_fraction",
                f"a number in [0, 1), got {self.eval_fraction!r}",
            )
            need(self.entry_point.isidentifier(), f"{where}.entry_point", "a Python identifier")
            need(
                self.timeout_s > 0 and self.workers >= 1, f"{where}.timeout_s", "> 0 (workers >= 1)"
            )

    @property
    def runs_code(self) -> bool:
        return self.options.reward == "code"

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        o = self.options
        path, split, subset, task_field = o.path, o.split, o.subset, o.task_field
        if o.reward == "math":
            try:
                import math_verify  # noqa: F401
            except ImportError:
                raise ImportError(
                    "reward 'math' needs math-verify: pip install math-verify"
                ) from None
        self.fields = {"prompt": o.prompt_field, "answer": o.answer_field, "tests": o.tests_field}
        self.reward_kind = o.reward
        self.rel_tol, self.abs_tol = o.rel_tol, o.abs_tol
        self.entry_point = o.entry_point
        self.timeout_s, self.workers = o.timeout_s, o.workers

        samples = []
        for where, row in load_rows(path, split=split, subset=subset):
            if task_field is not None:
                if task_field not in row:
                    raise ValueError(f"{where}: missing field {task_field!r} (task_field)")
                if row[task_field] != self.name:
                    continue
            samples.append(self._sample(where, row))
        if not samples:
            selected = f" with {task_field}={self.name!r}" if task_field else ""
            raise ValueError(f"{path}: no rows{selected}")
        self._split(samples, o.eval_fraction)

    # -- rows -> samples -----------------------------------------------------------------------
    def _sample(self, where: str, row: dict[str, Any]) -> Sample:
        prompt = row.get(self.fields["prompt"])
        if self.fields["prompt"] not in row:
            raise ValueError(f"{where}: missing field {self.fields['prompt']!r}{_fields(row)}")
        if type(prompt) is not str or not prompt.strip():
            raise ValueError(f"{where}: field {self.fields['prompt']!r} must be a non-empty string")
        answer = row.get(self.fields["answer"])
        if answer is None and self.reward_kind == "code":
            answer = ""  # a reference solution is optional for code: the tests decide
        elif self.fields["answer"] not in row:
            raise ValueError(f"{where}: missing field {self.fields['answer']!r}{_fields(row)}")
        if type(answer) not in (str, int, float):
            raise ValueError(f"{where}: field {self.fields['answer']!r} must be a string or number")
        meta: dict[str, Any] = {}
        if self.reward_kind == "code":
            if self.fields["tests"] not in row:
                raise ValueError(f"{where}: missing field {self.fields['tests']!r}{_fields(row)}")
            meta = parse_tests(row[self.fields["tests"]], self.entry_point, where)
        return Sample(self.name, prompt, str(answer), meta)

    def _split(self, samples: list[Sample], eval_fraction: float | None) -> None:
        """Held-out prompts from a shuffle of the distinct prompts seeded by the task's name alone
        (the same split for every run seed); the rest train. The "tune" split is the next block
        of the shuffle, disjoint from the test one."""
        prompts = list(dict.fromkeys(s.prompt for s in samples))
        random.Random(_stable_seed(self.name, "split")).shuffle(prompts)
        wanted = (
            round(eval_fraction * len(prompts)) if eval_fraction is not None else self.eval_size
        )
        n = max(0, min(wanted, len(prompts) - 1))  # keep one to train on
        if self.eval_split == "tune":
            start = n
            n = max(0, min(wanted, len(prompts) - 1 - start))
            prompts = prompts[start:]
        held_out = set(prompts[:n])
        first: dict[str, Sample] = {}
        for s in samples:
            if s.prompt in held_out:
                first.setdefault(s.prompt, s)
        self._eval = [first[p] for p in prompts if p in held_out]
        self._eval_prompts = held_out
        self._train = [s for s in samples if s.prompt not in held_out]

    def eval_set(self) -> list[Sample]:
        return self._eval

    def generate(self, rng: random.Random) -> Sample:
        return rng.choice(self._train)

    # -- rewards -------------------------------------------------------------------------------
    def reward(self, sample: Sample, completion: str) -> Reward:
        if self.reward_kind == "code":
            return self.rewards([sample], [completion])[0]
        if self.reward_kind == "math":
            return math_reward(completion, sample.answer, timeout_s=max(1, round(self.timeout_s)))
        if self.reward_kind == "numeric":
            return numeric_reward(
                completion, sample.answer, rel_tol=self.rel_tol, abs_tol=self.abs_tol
            )
        try:
            got = " ".join(extract_answer(completion).split())
            return Reward(
                float(got == " ".join(sample.answer.split())), {"format_ok": float(bool(got))}
            )
        except Exception:  # never let a completion crash training
            return Reward(0.0, {"format_ok": 0.0})

    def rewards(self, samples: list[Sample], completions: list[str]) -> list[Reward]:
        if self.reward_kind != "code":
            return super().rewards(samples, completions)
        return score_programs(
            samples,
            completions,
            workers=self.workers,
            timeout_s=self.timeout_s,
            preload=STDLIB_PRELOAD,
        )


# -- tests -------------------------------------------------------------------------------------
def parse_tests(raw: Any, entry_point: str, where: str) -> dict[str, Any]:
    """Normalise a row's tests (see the module docstring) to the meta ``score_programs`` reads:
    ``{"entry", "inputs", "outputs", "asserts"}``. Raises ValueError naming ``where``."""
    if type(raw) is str:
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: tests must be a list (or a JSON string of one)") from None
    if type(raw) is not list or not raw:
        raise ValueError(f"{where}: tests must be a non-empty list")
    entry, inputs, outputs, asserts = None, [], [], []
    for i, item in enumerate(raw):
        if type(item) is dict:
            if set(item) != {"input", "output"} or type(item["input"]) is not list:
                raise ValueError(
                    f"{where}: test {i} must be {{'input': [args...], 'output': value}}"
                )
            if not is_plain(item["input"]) or not is_plain(item["output"]):
                raise ValueError(f"{where}: test {i} must hold plain JSON values")
            if entry not in (None, entry_point):
                raise ValueError(f"{where}: test {i} calls {entry_point!r}, others {entry!r}")
            entry = entry_point
            inputs.append(item["input"])
            outputs.append(item["output"])
        elif type(item) is str:
            call = _literal_call(item, where, i)
            if call is not None and entry in (None, call[0]):
                entry = call[0]
                inputs.append(call[1])
                outputs.append(call[2])
                continue
            try:
                compiled = compile_assert(item, entry)
            except AssertFormError as exc:
                raise ValueError(f"{where}: test {i}: {exc}") from None
            if compiled.function is None:
                raise ValueError(f"{where}: test {i} does not call the tested function")
            entry = compiled.function
            asserts.append(item)
        else:
            raise ValueError(
                f"{where}: test {i} must be an assert string or an input/output object"
            )
    return {"entry": entry or entry_point, "inputs": inputs, "outputs": outputs, "asserts": asserts}


def _literal_call(source: str, where: str, i: int) -> tuple[str, list[Any], Any] | None:
    """``"assert f(1, [2]) == 3"`` -> ``("f", [1, [2]], 3)``; None for any other assert."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError(f"{where}: test {i} is not valid Python") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise ValueError(f"{where}: test {i} must be one assert statement")
    test = tree.body[0].test
    if not (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and isinstance(test.left, ast.Call)
        and isinstance(test.left.func, ast.Name)
        and not test.left.keywords
    ):
        return None
    try:
        args = [ast.literal_eval(arg) for arg in test.left.args]
        expected = ast.literal_eval(test.comparators[0])
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return None
    if not is_plain(args) or not is_plain(expected):
        return None
    # Outputs come back with tuples as lists (JSON semantics): expect them alike. Arguments
    # keep their tuples (they reach the function as written).
    return test.left.func.id, args, _lists(expected)


def _lists(value: Any) -> Any:
    if type(value) in (list, tuple):
        return [_lists(v) for v in value]
    if type(value) is dict:
        return {k: _lists(v) for k, v in value.items()}
    return value


# -- files -------------------------------------------------------------------------------------
def load_rows(
    path: str, *, split: str = "train", subset: str | None = None
) -> list[tuple[str, dict]]:
    """``(where, row)`` pairs from a local file or a Hugging Face dataset; ``where`` locates the
    row in error messages ("data.jsonl:3", "data.parquet: row 3"). Raises a one-line ValueError
    for anything malformed."""
    extension = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory; expected a .jsonl, .json or .parquet file")
    if os.path.exists(path):
        if extension in (".jsonl", ".ndjson"):
            rows = _read_jsonl(path)
        elif extension == ".json":
            rows = _read_json(path)
        elif extension == ".parquet":
            rows = _read_parquet(path)
        else:
            raise ValueError(
                f"{path}: unknown file extension {extension!r}; expected .jsonl, .json or .parquet"
            )
    elif extension in LOCAL_EXTENSIONS or path.startswith((".", "/", "~")):
        raise ValueError(f"{path}: file not found")
    else:
        rows = _read_hub(path, split, subset)
    if not rows:
        raise ValueError(f"{path}: no rows (empty file)")
    for where, row in rows:
        if type(row) is not dict:
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return rows


def _read_jsonl(path: str) -> list[tuple[str, Any]]:
    rows = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
                ) from None
    return rows


def _read_json(path: str) -> list[tuple[str, Any]]:
    """A JSON array of objects, or (a common misnaming) JSON lines."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _read_jsonl(path)
    if type(data) is not list:
        raise ValueError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    return [(f"{path}: row {i + 1}", row) for i, row in enumerate(data)]


def _read_parquet(path: str) -> list[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        message = " ".join(str(exc).split())
        raise ValueError(f"{path}: not a readable Parquet file: {message}") from None
    return [(f"{path}: row {i + 1}", row) for i, row in enumerate(table.to_pylist())]


def _read_hub(path: str, split: str, subset: str | None) -> list[tuple[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"{path!r} is not a local file, so it would be loaded from the Hugging Face Hub, "
            "which needs the datasets package: pip install datasets"
        ) from None
    data = datasets.load_dataset(path, subset, split=split)
    return [(f"{path}[{split}]: row {i + 1}", dict(row)) for i, row in enumerate(data)]


def _fields(row: dict[str, Any]) -> str:
    names = ", ".join(repr(str(k)) for k in list(row)[:20])
    return f" (fields: {names})" if names else " (no fields)"
