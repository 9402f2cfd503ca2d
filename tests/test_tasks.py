"""Properties of every registered task, and hand-checked cases of the individual ones."""

from __future__ import annotations

import json
import random
from fractions import Fraction

import pytest

from taskgrad.tasks import TASKS, Reward, Sample, Task
from taskgrad.tasks.answers import extract_answer, extract_number, extract_program
from taskgrad.tasks.countdown import Countdown
from taskgrad.tasks.expressions import ExpressionError, evaluate

MALFORMED = [
    "",
    "   ",
    "\x00\xff",
    "x" * 100_000,
    "7" * 100_000,
    "é∑😀 ünïcødé \u202e",
    "((((((",
    "))))",
    "1/0",
    "9" * 5000,
    "2**99999999",
    "\\boxed{",
    "\\boxed{}" * 1000,
    "Answer:",
    "__import__('os').system('echo pwned')",
    "lambda: (yield)",
    "```python\n```",
    "\ud800",  # a lone surrogate: not even encodable as UTF-8
]


def write_math_jsonl(path) -> None:
    """150 distinct short rows: "a+b=" -> "a+b"."""
    with open(path, "w") as fh:
        for a in range(15):
            for b in range(10):
                fh.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")


@pytest.fixture(params=TASKS.names())
def task(request: pytest.FixtureRequest, tmp_path) -> Task:
    name = request.param
    if name == "dataset":
        path = tmp_path / "rows.jsonl"
        write_math_jsonl(path)
        return TASKS.get(name)(path=str(path), reward="math", name="mathrows")
    return TASKS.get(name)()


def score(task: Task, samples: list[Sample], completions: list[str]) -> list[Reward]:
    rewards = task.rewards(samples, completions)
    assert len(rewards) == len(samples)
    for r in rewards:
        assert r.value in (0.0, 1.0)
        assert all(0.0 <= v <= 1.0 for v in r.metrics.values()), r
    return rewards


def wrong_answer(task: Task, sample: Sample) -> str:
    """An answer that is certainly wrong, in the task's own format."""
    if task.name == "code":
        return f"({sample.answer})+1"
    if task.name == "countdown":
        return f"({sample.answer})*2"  # target*2 != target, as targets are >= 1
    return str(extract_number(sample.answer) + 1)


# -- every task -------------------------------------------------------------------------------
def test_reference_answers_score_1(task: Task) -> None:
    if not task.verifiable:
        pytest.skip(f"{task.name}: its reward ignores the completion (a control)")
    samples = task.eval_set()[:16]
    assert all(r.value == 1.0 for r in score(task, samples, [s.answer for s in samples]))
    demos = [task.demonstration(s) for s in samples]
    assert all(r.value == 1.0 for r in score(task, samples, demos))


def test_llm_style_completions_score_1(task: Task) -> None:
    if not task.verifiable:
        pytest.skip(f"{task.name}: its reward ignores the completion (a control)")
    samples = task.eval_set()[:8]
    completions = [
        f"Let's think step by step. First I read the problem: {s.prompt}\n"
        f"Working through it carefully, 1 + 1 = 2 and so on.\n"
        f"Therefore, the final answer is $\\boxed{{{s.answer}}}$."
        for s in samples
    ]
    assert all(r.value == 1.0 for r in score(task, samples, completions))
    plain = [f"I computed it.\nAnswer: {s.answer}" for s in samples]
    assert all(r.value == 1.0 for r in score(task, samples, plain))


def test_wrong_answers_score_0(task: Task) -> None:
    if not task.verifiable:
        pytest.skip(f"{task.name}: its reward ignores the completion (a control)")
    samples = task.eval_set()[:8]
    wrong = [wrong_answer(task, s) for s in samples]
    assert all(r.value == 0.0 for r in score(task, samples, wrong))


def test_malformed_outputs_score_0_without_raising(task: Task) -> None:
    if not task.verifiable:
        pytest.skip(f"{task.name}: its reward ignores the completion (a control)")
    sample = task.eval_set()[0]
    rewards = score(task, [sample] * len(MALFORMED), MALFORMED)
    assert [r.value for r in rewards] == [0.0] * len(MALFORMED)
    assert task.reward(sample, "") == Reward(0.0, task.reward(sample, "").metrics)


def test_eval_set_is_fixed_distinct_and_seeded(task: Task) -> None:
    eval_set = task.eval_set()
    assert len(eval_set) == 64
    assert len({s.prompt for s in eval_set}) == 64
    assert all(s.task == task.name for s in eval_set)
    again = type(task)(**_options(task))
    assert [s.prompt for s in again.eval_set()] == [s.prompt for s in eval_set]
    other_seed = type(task)(**_options(task), seed=1)  # the same held-out set for every seed
    assert [s.prompt for s in other_seed.eval_set()] == [s.prompt for s in eval_set]


def _options(task: Task) -> dict:
    if task.name == "mathrows":
        return {"path": task.options.path, "reward": "math", "name": "mathrows"}
    return {}


def test_training_samples_are_never_held_out(task: Task) -> None:
    held_out = {s.prompt for s in task.eval_set()}
    rng = random.Random(0)
    drawn = [task.sample(rng) for _ in range(500)]
    assert not held_out & {s.prompt for s in drawn}
    assert len({s.prompt for s in drawn}) > 20  # varied


def test_prompts_and_answers_fit_the_tiny_model(task: Task) -> None:
    rng = random.Random(1)
    samples = task.eval_set() + [task.sample(rng) for _ in range(300)]
    for s in samples:
        assert all(32 <= ord(ch) <= 126 for ch in s.prompt), s.prompt
        assert 0 < len(s.prompt) <= 48, s.prompt
        demo = task.demonstration(s)
        assert 0 < len(demo) <= 12 and all(32 <= ord(ch) <= 126 for ch in demo), demo
        json.dumps(s.meta)  # meta is JSON-serialisable


def test_name_option_renames_the_instance() -> None:
    for name in TASKS.names():
        if name != "dataset":
            task = TASKS.get(name)(name=f"my_{name}", eval_size=4)
            assert {s.task for s in task.eval_set()} == {f"my_{name}"}


# -- answer extraction ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("completion", "answer", "number"),
    [
        ("37", "37", Fraction(37)),
        ("x = -3", "x = -3", Fraction(-3)),
        ("so 5-3", "so 5-3", Fraction(3)),  # subtraction, not a negative number
        ("The total is 1,234.", "The total is 1,234", Fraction(1234)),
        ("the answer is 2.50.", "2.50", Fraction(5, 2)),
        ("Answer: 3/4\nbecause 7", "3/4", Fraction(3, 4)),
        ("We get \\boxed{\\frac{3}{4}} and \\boxed{-12}.", "-12", Fraction(-12)),
        ("$\\boxed{\\dfrac{1}{2}}$", "\\dfrac{1}{2}", Fraction(1, 2)),
        ("**Answer:** **42**.", "42", Fraction(42)),
        ("−7", "−7", Fraction(-7)),
        ("1/0", "1/0", None),
        ("9" * 5000, "9" * 5000, None),
        ("no digits", "no digits", None),
    ],
)
def test_extraction(completion: str, answer: str, number: Fraction | None) -> None:
    assert extract_answer(completion) == answer
    assert extract_number(extract_answer(completion)) == number


def test_program_extraction() -> None:
    expected = "def f(x):\n    return x*3+1\n"
    assert extract_program("x*3+1") == expected
    assert extract_program("The answer is \\boxed{x*3+1}.") == expected
    assert extract_program("f(x) = x*3+1") == expected
    fenced = "Here:\n```python\ndef f(x):\n    return x*3+1\n```\nDone."
    assert extract_program(fenced) == expected
    prose = "Sure.\ndef f(x):\n    y = x * 3\n    return y + 1\nThis works."
    assert extract_program(prose) == "def f(x):\n    y = x * 3\n    return y + 1\n"
    assert extract_program("") is None and extract_program("a\nb") is None


# -- countdown --------------------------------------------------------------------------------
COUNTDOWN_13 = Sample(
    "countdown", "make 13 from 3 5 2:", "3*5-2", {"numbers": [3, 5, 2], "target": 13}
)


@pytest.mark.parametrize(
    ("completion", "value"),
    [
        ("3*5-2", 1.0),
        ("5*3-2", 1.0),
        ("2*5+3", 1.0),  # 10+3
        ("(3*5)-2", 1.0),
        ("3*5-2 = 13", 1.0),
        ("13 = 3 * 5 - 2", 1.0),
        ("The answer is $\\boxed{3 \\times 5 - 2}$.", 1.0),
        ("3*5-2*1", 0.0),  # 1 is not given
        ("15-2", 0.0),  # 15 is not given
        ("13", 0.0),  # neither is 13
        ("2*(5+3)-3", 0.0),  # 3 used twice (value 13)
        ("3*5-2+0", 0.0),  # 0 not given
        ("3*5+2", 0.0),  # 17
        ("(3+5)/(2-2)", 0.0),  # division by zero (and 2 reused)
        ("(3+5)/0", 0.0),
        ("-2+3*5", 0.0),  # unary minus is not allowed (value 13)
        ("3*5-2.0", 0.0),  # floats are not allowed
        ("abs(3*5-2)", 0.0),  # calls are not allowed
        ("x", 0.0),
        ("__import__('os').system('true') or 13", 0.0),
        ("3**2+5-2+1", 0.0),  # ** is not allowed
        ("3*5-2; import os", 0.0),
        ("(" * 300 + "13" + ")" * 300, 0.0),
    ],
)
def test_countdown_hand_checked(completion: str, value: float) -> None:
    assert Countdown().reward(COUNTDOWN_13, completion).value == value


def test_countdown_exact_fractions_and_use_all() -> None:
    sample = Sample(
        "countdown", "make 24 from 1 3 4 6:", "", {"numbers": [1, 3, 4, 6], "target": 24}
    )
    assert Countdown().reward(sample, "6/(1-3/4)").value == 1.0  # 6 / (1/4), exact
    assert Countdown().reward(sample, "4*6").value == 1.0
    assert Countdown(use_all=True).reward(sample, "4*6").value == 0.0
    assert Countdown(use_all=True).reward(sample, "6/(1-3/4)").value == 1.0


def test_evaluate_rejects_everything_but_arithmetic() -> None:
    assert evaluate("(3+5)*2").value == 16 and evaluate("(3+5)*2").numbers == [3, 5, 2]
    for text in [
        "1/0",
        "2**3",
        "-1",
        "+1",
        "1.5",
        "True",
        "a",
        "f(1)",
        "[1]",
        "1 if 1 else 2",
        "1//2",
    ]:
        with pytest.raises(ExpressionError):
            evaluate(text)


# -- code -------------------------------------------------------------------------------------
def test_code_task_scores_real_programs() -> None:
    code = TASKS.get("code")()
    sample = Sample(
        "code",
        "f(x): mul 3 add 1; f(2)=7:",
        "x*3+1",
        {"entry": "f", "inputs": [[0], [1], [-4]], "outputs": [1, 4, -11], "asserts": []},
    )
    completions = {
        "x*3+1": 1.0,
        "3*x+1": 1.0,
        "1+x+x+x": 1.0,
        "```python\ndef f(x):\n    return x * 3 + 1\n```": 1.0,
        "lambda x: x*3+1": 1.0,
        "abs(x*3+1)": 0.0,  # right on 0 and 1, not on -4
        "print('PASS') or __import__('posix')._exit(0)": 0.0,
        "type('E', (), {'__eq__': lambda s, o: True})()": 0.0,
    }
    rewards = code.rewards([sample] * len(completions), list(completions))
    assert [r.value for r in rewards] == list(completions.values())
    assert rewards[5].metrics == {"format_ok": 1.0, "tests_passed": 2 / 3}


def test_code_batch_of_32_is_fast() -> None:
    import time

    code = TASKS.get("code")()
    samples = code.eval_set()[:32]
    start = time.monotonic()
    rewards = code.rewards(samples, [s.answer for s in samples])
    elapsed = time.monotonic() - start
    assert all(r.value == 1.0 for r in rewards)
    assert elapsed < 3.0  # about 0.4 s on 2 CPU cores; generous for loaded CI machines


# -- numeric tasks ----------------------------------------------------------------------------
def test_table_qa_tolerance() -> None:
    table = TASKS.get("table_qa")()
    sample = Sample("table_qa", "a=4 b=10 c=1; b/a?", "2.5")
    assert table.reward(sample, "2.5").value == 1.0
    assert table.reward(sample, "2.50").value == 1.0
    assert table.reward(sample, "5/2").value == 1.0
    assert table.reward(sample, "2.5001").value == 1.0  # within rel_tol 1e-4
    assert table.reward(sample, "2.51").value == 0.0
    assert TASKS.get("table_qa")(rel_tol=0.01).reward(sample, "2.51").value == 1.0


def test_numeric_tasks_known_examples() -> None:
    assert TASKS.get("arithmetic")().reward(Sample("arithmetic", "23+7*2=", "37"), "37").value == 1
    linear = TASKS.get("linear_eq")()
    assert linear.reward(Sample("linear_eq", "3x+4=19;x=", "5"), "x = 5").value == 1
    multistep = TASKS.get("multistep")()
    assert multistep.reward(Sample("multistep", "(3+4)*(9-5)-6=", "22"), "22").value == 1


def test_generated_answers_are_right() -> None:
    for name in ("arithmetic", "multistep"):
        for sample in TASKS.get(name)().eval_set():
            assert evaluate(sample.prompt.removesuffix("=")).value == int(sample.answer)
    assert all("(" in s.prompt for s in TASKS.get("multistep")().eval_set())
    for sample in TASKS.get("linear_eq")().eval_set():
        left, right = sample.prompt.removesuffix(";x=").split("=")
        a, b = left.split("x")
        assert int(a) * int(sample.answer) + int(b) == int(right)
    for sample in TASKS.get("table_qa")().eval_set():
        assert TASKS.get("table_qa")().reward(sample, sample.answer).value == 1


def test_expression_parsing_of_model_output_is_silent() -> None:
    """'1if' makes Python's parser warn (invalid decimal literal); model output must not reach
    stderr through a warning."""
    import warnings

    from taskgrad.tasks.expressions import ExpressionError, evaluate

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ExpressionError):  # a conditional expression is not arithmetic
            evaluate("1if 2 else 3+4")
    assert [str(w.message) for w in caught] == []


def test_the_tune_set_is_disjoint_from_the_test_set_and_seed_independent(task: Task) -> None:
    kwargs = _options(task)
    test = {s.prompt for s in type(task)(**kwargs, eval_size=16).eval_set()}
    tune = type(task)(**kwargs, eval_size=16, eval_split="tune")
    tuned = {s.prompt for s in tune.eval_set()}
    assert tuned and not tuned & test
    again = type(task)(**kwargs, eval_size=16, eval_split="tune", seed=5)
    assert {s.prompt for s in again.eval_set()} == tuned
