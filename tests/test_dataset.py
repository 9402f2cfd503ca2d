"""The dataset-backed task: loading JSONL / JSON / Parquet, its rewards, and one-line errors."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

from taskgrad.tasks import TASKS, Sample
from taskgrad.tasks.dataset import Dataset, parse_tests


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def math_rows(n: int = 20) -> list[dict[str, object]]:
    return [{"prompt": f"What is {i}/2?", "answer": f"\\frac{{{i}}}{{2}}"} for i in range(1, n + 1)]


def test_registered_and_named_by_config(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", math_rows())
    task = TASKS.get("dataset")(path=str(path), name="math", eval_size=5)
    assert task.name == "math" and {s.task for s in task.eval_set()} == {"math"}


def test_split_is_deterministic_disjoint_and_sized(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", math_rows(20))
    task = Dataset(path=str(path), eval_fraction=0.25)
    held_out = [s.prompt for s in task.eval_set()]
    assert len(held_out) == 5 == len(set(held_out))
    assert held_out == [s.prompt for s in Dataset(path=str(path), eval_fraction=0.25).eval_set()]
    # the same split for every run seed, so that seeds are scored on the same prompts
    assert held_out == [
        s.prompt for s in Dataset(path=str(path), eval_fraction=0.25, seed=3).eval_set()
    ]
    assert held_out != [
        s.prompt for s in Dataset(path=str(path), eval_fraction=0.25, name="other").eval_set()
    ]
    rng = random.Random(0)
    drawn = {task.sample(rng).prompt for _ in range(300)}
    assert len(drawn) == 15 and not drawn & set(held_out)
    # more held out than rows: one row is still left to train on
    small = Dataset(path=str(path), eval_size=1000)
    assert len(small.eval_set()) == 19 and small.sample(rng).prompt not in {
        s.prompt for s in small.eval_set()
    }


def test_duplicate_prompts_stay_on_one_side(tmp_path: Path) -> None:
    rows = math_rows(10) + math_rows(10)
    task = Dataset(path=str(write_jsonl(tmp_path / "d.jsonl", rows)), eval_size=4)
    held_out = {s.prompt for s in task.eval_set()}
    assert len(task.eval_set()) == 4
    assert not held_out & {s.prompt for s in task._train}


def test_math_reward_uses_math_verify(tmp_path: Path) -> None:
    task = Dataset(path=str(write_jsonl(tmp_path / "d.jsonl", math_rows())), eval_size=2)
    half = Sample(task.name, "What is 1/2?", "\\frac{1}{2}")
    # math-verify 0.9 judges these equivalent to \frac{1}{2} (checked against the package)
    for completion in ["\\boxed{0.5}", "so the answer is $\\frac{1}{2}$", "\\boxed{1/2}", "0.5"]:
        assert task.reward(half, completion).value == 1.0, completion
    for completion in ["\\boxed{0.6}", "\\boxed{2}", "", "((((((", "\\boxed{x}"]:
        assert task.reward(half, completion).value == 0.0, completion
    assert task.reward(half, "\\boxed{0.6}").metrics == {"format_ok": 1.0}
    assert task.reward(half, "").metrics == {"format_ok": 0.0}


def test_numeric_and_exact_rewards(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "gold": str(i * 1.5), "task": "finqa"} for i in range(10)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    numeric = Dataset(
        path=str(path), prompt_field="question", answer_field="gold", reward="numeric"
    )
    sample = Sample(numeric.name, "q3", "4.5")
    assert numeric.reward(sample, "The change is 4.50%.").value == 1.0
    assert numeric.reward(sample, "4.5004").value == 1.0  # rel_tol 1e-4
    assert numeric.reward(sample, "4.6").value == 0.0
    exact = Dataset(path=str(path), prompt_field="question", answer_field="gold", reward="exact")
    assert exact.reward(sample, "Answer:  4.5 ").value == 1.0
    assert exact.reward(sample, "4.50").value == 0.0


def test_task_field_selects_rows(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "answer": "1", "task": "a" if i % 3 else "b"} for i in range(30)]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    b = Dataset(path=str(path), name="b", task_field="task", reward="exact", eval_size=2)
    assert len(b._train) + len(b.eval_set()) == 10
    with pytest.raises(ValueError, match="no rows with task='c'"):
        Dataset(path=str(path), name="c", task_field="task", reward="exact")


def test_code_rows_in_every_test_format(tmp_path: Path) -> None:
    rows = [
        {
            "prompt": "double",
            "answer": "",
            "tests": ["assert double(2) == 4", "assert double(-1) == -2"],
        },
        {
            "prompt": "pair",
            "tests": [{"input": [1, 2], "output": [1, 2]}, {"input": [0, 0], "output": [0, 0]}],
        },
        {"prompt": "json", "tests": json.dumps(["assert f(3) == 9"])},
        {"prompt": "free", "tests": ["assert f(3) > 8", "assert f(0) == 0"]},
        {"prompt": "sort", "tests": [{"input": [[3, 1, 2]], "output": [1, 2, 3]}]},
        {"prompt": "tuple", "tests": ["assert f((1, 2), {'a': [3]}) == (2, 3)"]},
    ]
    task = Dataset(path=str(write_jsonl(tmp_path / "code.jsonl", rows)), reward="code", eval_size=0)
    by_prompt = {s.prompt: s for s in task._train}
    assert by_prompt["double"].meta == {
        "entry": "double",
        "inputs": [[2], [-1]],
        "outputs": [4, -2],
        "asserts": [],
    }
    completions = {
        "double": (
            "```python\ndef double(x):\n    return 2 * x\n```",
            "def double(x): return x + 2",
        ),
        "pair": ("def f(a, b):\n    return (a, b)", "def f(a, b):\n    return [b, a]"),
        "json": ("x * x", "x + 1"),
        "free": ("def f(x):\n    return x * x", "def f(x):\n    return x"),
        "sort": ("sorted(x)", "x"),
        "tuple": ("def f(t, d):\n    return t[1], d['a'][0]", "def f(t, d):\n    return list(t)"),
    }
    samples = [by_prompt[p] for p in completions]
    good = task.rewards(samples, [c[0] for c in completions.values()])
    bad = task.rewards(samples, [c[1] for c in completions.values()])
    assert [r.value for r in good] == [1.0] * len(samples)
    assert [r.value for r in bad] == [0.0] * len(samples)


def test_parse_tests_rejects_malformed() -> None:
    for raw, message in [
        ([], "non-empty list"),
        ("not json", "must be a list"),
        ([{"input": 3, "output": 1}], "input"),
        ([{"in": [1], "out": 2}], "input"),
        (["assert f(1) ==="], "not valid Python"),
        (["x = 1"], "one assert"),
        ([3], "assert string or an input/output object"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            parse_tests(raw, "f", "rows.jsonl:7")
        assert str(info.value).startswith("rows.jsonl:7: ")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (
            '{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2"}\n{"prompt": "c", "a\n',
            ":3: invalid JSON",
        ),
        ('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b"}\n', ":3: missing field 'answer'"),
        ('{"prompt": "a", "answer": "1"}\n[1, 2]\n', ":2: expected a JSON object"),
        ('{"prompt": 5, "answer": "1"}\n', ":1: field 'prompt' must be a non-empty string"),
        ('{"prompt": "a", "answer": {"x": 1}}\n', ":1: field 'answer' must be a string or number"),
        ("", ": no rows (empty file)"),
        ("\n\n", ": no rows (empty file)"),
    ],
    ids=["bad-json", "missing-field", "not-object", "bad-prompt", "bad-answer", "empty", "blank"],
)
def test_malformed_jsonl_gives_one_line_error(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        Dataset(path=str(path), reward="exact")
    message = str(info.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message


def test_other_file_errors(tmp_path: Path) -> None:
    bad_utf8 = tmp_path / "latin.jsonl"
    bad_utf8.write_bytes(b'{"prompt": "a", "answer": "1"}\n{"prompt": "\xe9"}\n')
    cases = {
        str(bad_utf8): ":2: not valid UTF-8",
        str(tmp_path / "rows.csv"): "file not found",
        str(tmp_path): "is a directory",
        str(tmp_path / "missing.jsonl"): "file not found",
    }
    (tmp_path / "data.txt").write_text("x")
    cases[str(tmp_path / "data.txt")] = "unknown file extension '.txt'"
    array = tmp_path / "rows.json"
    array.write_text(json.dumps([{"prompt": "a", "answer": "1"}, {"prompt": "b"}]))
    cases[str(array)] = ": row 2: missing field 'answer'"
    for path, fragment in cases.items():
        with pytest.raises(ValueError) as info:
            Dataset(path=path, reward="exact")
        assert fragment in str(info.value) and "\n" not in str(info.value), path


def test_bad_options(tmp_path: Path) -> None:
    path = str(write_jsonl(tmp_path / "d.jsonl", math_rows()))
    for options, message in [
        ({}, r"options\.path: need a file"),
        ({"path": path, "reward": "fuzzy"}, r"options\.reward: invalid value 'fuzzy'; valid: math"),
        ({"path": path, "eval_fraction": 1.5}, "eval_fraction"),
        ({"path": path, "entry_point": "not valid"}, "entry_point"),
    ]:
        with pytest.raises(ValueError, match=message):
            Dataset(**options)


def test_json_lines_named_json_and_json_arrays(tmp_path: Path) -> None:
    lines = write_jsonl(tmp_path / "lines.json", math_rows(5))
    array = tmp_path / "array.json"
    array.write_text(json.dumps(math_rows(5)))
    for path in (lines, array):
        task = Dataset(path=str(path), eval_size=2)
        assert len(task.eval_set()) == 2 and len(task._train) == 3


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"prompt": f"p{i}", "answer": str(i), "tests": ["assert f(1) == 1"]} for i in range(10)]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    task = Dataset(path=str(path), reward="numeric", eval_size=3)
    assert len(task.eval_set()) == 3 and task.reward(Sample(task.name, "p1", "1"), "1").value == 1
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="not a readable Parquet file") as info:
        Dataset(path=str(broken), reward="numeric")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(ImportError, match="pip install pyarrow"):
        Dataset(path=str(path), reward="numeric")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets installed")
def test_hub_id_without_datasets_says_what_to_install() -> None:
    with pytest.raises(ImportError, match="pip install datasets"):
        Dataset(path="someone/some-dataset", reward="numeric")
