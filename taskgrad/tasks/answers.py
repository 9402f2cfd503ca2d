"""Lenient answer extraction shared by every task: model output is hostile input.

The tiny policy answers with the bare answer ("37"); instruct LLMs reason first and end with
``\\boxed{37}`` or "The answer is 37". ``extract_answer`` handles both; numeric tasks then take
the last number of that text with ``extract_number``. Nothing here raises on any string, and
every scan is linear in the input length (no regex that can backtrack badly).
"""

from __future__ import annotations

import re
from collections import deque
from fractions import Fraction

from taskgrad.tasks.base import Reward

MAX_NUMBER_DIGITS = 40  # longer digit runs are not answers to these tasks; also bounds Fraction

_BOXED = ("\\boxed", "\\fbox")
_ANSWER_MARKER = re.compile(r"answer\s*(?:is\s*:?|:)", re.IGNORECASE)
# A number: optional sign (not after a digit or ")": "5-3" is a subtraction), thousands
# separators "1,234", decimals "2.50", a fraction "3/4". Not inside a word ("x2") or after a
# decimal point. Linear: no nested quantifier can backtrack.
_NUMBER = re.compile(
    r"(?<![\w.])(?:(?<![\d)])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
)
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.]+)\s*\}\s*\{\s*(-?[\d.]+)\s*\}")
_BRACES = re.compile(r"[{}]")
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-"})


def extract_answer(completion: str) -> str:
    """The answer part of a completion: the content of the last ``\\boxed{...}``, else the rest
    of the line after the last "Answer:" / "answer is", else the whole completion; stripped of
    surrounding whitespace, ``$``, ``**``, backticks and a final period."""
    if type(completion) is not str:
        return ""
    text = _last_boxed(completion)
    if text is None:
        text = completion
        marker = _last_match(_ANSWER_MARKER, completion)
        if marker is not None:
            rest = completion[marker.end() :].strip()
            text = rest.split("\n", 1)[0]
    return _tidy(text)


def extract_number(text: str) -> Fraction | None:
    """The last number in ``text`` as an exact Fraction ("1,234" -> 1234, "-3", "2.50" -> 5/2,
    "3/4", "\\frac{3}{4}"), or None if there is none (or it is absurdly long, or x/0)."""
    if type(text) is not str:
        return None
    text = _FRAC.sub(r"\1/\2", text.translate(_MINUS_SIGNS))
    last = _last_match(_NUMBER, text)
    if last is None:
        return None
    token = last.group(0).replace(",", "").replace(" ", "")
    if sum(ch.isdigit() for ch in token) > MAX_NUMBER_DIGITS:
        return None
    numerator, _, denominator = token.partition("/")
    try:
        value = Fraction(numerator)
        if denominator:
            value /= Fraction(denominator)
    except (ValueError, ZeroDivisionError):
        return None
    return value


def numbers_match(got: Fraction, want: Fraction, *, rel_tol: float, abs_tol: float) -> bool:
    """``|got - want| <= max(rel_tol * max(|got|, |want|), abs_tol)``, computed exactly."""
    tolerance = max(Fraction(rel_tol) * max(abs(got), abs(want)), Fraction(abs_tol))
    return abs(got - want) <= tolerance


def numeric_reward(
    completion: str, answer: str, *, rel_tol: float = 0.0, abs_tol: float = 0.0
) -> Reward:
    """1.0 iff the last number of the extracted answer matches ``answer`` (exactly by default).

    Metric ``format_ok``: a number could be extracted at all."""
    try:
        got = extract_number(extract_answer(completion))
        want = extract_number(answer)
        if got is None or want is None:
            return Reward(0.0, {"format_ok": 0.0})
        ok = numbers_match(got, want, rel_tol=rel_tol, abs_tol=abs_tol)
        return Reward(float(ok), {"format_ok": 1.0})
    except Exception:  # never let a completion crash training
        return Reward(0.0, {"format_ok": 0.0})


def format_number(value: Fraction) -> str:
    """A reference answer as short text: "7", "-3", "2.5" (value must be a terminating decimal
    with at most 6 decimals; tasks only generate such values)."""
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    if Fraction(text) != value:
        raise ValueError(f"{value} has no short decimal form")
    return text


def is_short_decimal(value: Fraction, places: int = 2) -> bool:
    """Whether ``value`` is exactly a decimal with at most ``places`` decimals."""
    return (value * 10**places).denominator == 1


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    last = deque(pattern.finditer(text), maxlen=1)  # one pass, constant memory
    return last[0] if last else None


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces matched; an unclosed one runs to the end),
    or the token after a brace-less ``\\boxed 5``; None if there is no ``\\boxed``."""
    start = max(text.rfind(tag) for tag in _BOXED)
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return text[i:].split(maxsplit=1)[0] if text[i:].strip() else ""
    depth = 0
    for brace in _BRACES.finditer(text, i):
        depth += 1 if brace.group() == "{" else -1
        if depth == 0:
            return text[i + 1 : brace.start()]
    return text[i + 1 :]


def _tidy(text: str) -> str:
    """Drop the decorations around an answer: "**$37$**." -> "37", "\\(x\\)" -> "x"."""
    text = text.strip()
    for _ in range(3):
        for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
            if text.startswith(left) and text.endswith(right):
                text = text[len(left) : -len(right)]
        # Never strip a leading ".": ".5" is a number.
        text = text.lstrip(" \t*$`").rstrip(" \t*$`.")
    return text


def extract_program(completion: str, *, entry: str = "f", arg: str = "x") -> str | None:
    """A Python program defining ``entry`` from a completion, or None if there is nothing to run.

    The last complete ```` ``` ```` fenced block (language tag dropped) is used if any. Code that
    defines ``def <entry>`` is used as is (outside a fence: from that line through its indented
    body). Anything else is an expression, taken from ``extract_answer`` and wrapped as
    ``def <entry>(<arg>):\\n    return <expression>``; "return ", "f(x) =" and "lambda x:"
    prefixes are dropped, and a multi-line expression is rejected."""
    if type(completion) is not str:
        return None
    parts = completion.split("```")
    fenced = None
    if len(parts) >= 3:
        fenced = parts[len(parts) - 2 if len(parts) % 2 else len(parts) - 3]
        first, newline, rest = fenced.partition("\n")
        if newline and (not first.strip() or first.strip().isalnum()):
            fenced = rest  # drop a language tag such as "python"
    source = fenced if fenced is not None else completion
    if f"def {entry}(" in source:
        return fenced if fenced is not None else _function_lines(completion, entry)
    expr = fenced.strip() if fenced is not None else extract_answer(completion)
    for prefix in ("return ", f"{entry}({arg}) =", f"{entry}({arg})=", f"lambda {arg}:"):
        if expr.startswith(prefix):
            expr = expr[len(prefix) :].strip()
    if not expr or "\n" in expr:
        return None
    return f"def {entry}({arg}):\n    return {expr}\n"


def _function_lines(text: str, entry: str) -> str:
    """From the line starting ``def <entry>`` through the indented (or blank) lines after it."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if f"def {entry}(" in line)
    body = [lines[start][lines[start].index(f"def {entry}(") :]]
    for line in lines[start + 1 :]:
        if line.strip() and not line[:1].isspace():
            break
        body.append(line)
    return "\n".join(body) + "\n"


MAX_MATH_CHARS = 500  # math-verify slows down sharply on long inputs; answers sit at the end


def math_reward(completion: str, gold: str, *, timeout_s: int = 2) -> Reward:
    """1.0 iff math-verify judges the extracted answer equivalent to ``gold`` (LaTeX or plain:
    ``\\frac{1}{2}`` matches ``\\boxed{0.5}`` and "1/2").

    The extracted answer is parsed as ``\\boxed{...}`` first, then, if that yields nothing, by
    math-verify's own extraction. math-verify bounds its time with SIGALRM, which only works in
    the main thread: elsewhere it runs without a timeout, on inputs capped to
    ``MAX_MATH_CHARS``. Metric ``format_ok``: the answer parsed."""
    try:
        import threading

        from math_verify import parse, verify

        timeout = timeout_s if threading.current_thread() is threading.main_thread() else None
        answer = extract_answer(completion)[-MAX_MATH_CHARS:]
        if not answer:
            return Reward(0.0, {"format_ok": 0.0})
        wanted = _parse_gold(gold[:MAX_MATH_CHARS], timeout)
        got = parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout) or parse(
            answer, parsing_timeout=timeout
        )
        if not got or not wanted:
            return Reward(0.0, {"format_ok": float(bool(got))})
        ok = verify(wanted, got, timeout_seconds=timeout)
        return Reward(float(ok is True), {"format_ok": 1.0})
    except BaseException as exc:  # math-verify's TimeoutException derives from BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return Reward(0.0, {"format_ok": 0.0})


def _parse_gold(gold: str, timeout: int | None) -> list:
    from math_verify import parse

    if "\\boxed" in gold or "$" in gold:
        return parse(gold, parsing_timeout=timeout)
    return parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout) or parse(
        gold, parsing_timeout=timeout
    )
