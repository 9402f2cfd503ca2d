"""Arithmetic expressions: random ones for prompts, and a safe exact evaluator for answers.

``random_expression`` builds a random binary tree over given numbers and renders it with the
fewest parentheses; ``evaluate`` parses text with ``ast`` (never ``eval``), accepts only
non-negative integer literals and the allowed binary operators, and computes with exact
``Fraction`` arithmetic, so "1/0", "2**99999999" or "__import__('os')" are errors, not crashes.
"""

from __future__ import annotations

import ast
import random
import warnings
from dataclasses import dataclass
from fractions import Fraction

MAX_EXPRESSION_CHARS = 200  # longer answers are rejected before parsing
MAX_LITERAL = 10**6  # larger literals are not part of any answer here

_AST_OPS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


class ExpressionError(ValueError):
    """The text is not an allowed arithmetic expression, or it divides by zero."""


@dataclass(frozen=True)
class Evaluated:
    value: Fraction
    numbers: list[int]  # the integer literals, in order of appearance


def evaluate(text: str, *, ops: str = "+-*/") -> Evaluated:
    """Exact value of an arithmetic expression over non-negative integer literals.

    Allowed: integer literals up to ``MAX_LITERAL``, parentheses, and the binary operators in
    ``ops``. Not allowed: unary minus or plus (numbers are given positive; subtraction covers
    it), floats, names, calls, attributes, ``**``, ``//``, ``%``. Raises ExpressionError."""
    if type(text) is not str or len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError("not a short string")
    try:
        with warnings.catch_warnings():  # e.g. "1if": hostile text must not write to stderr
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ExpressionError(f"not an expression: {type(exc).__name__}") from None
    numbers: list[int] = []
    value = _value(tree.body, ops, numbers, depth=0)
    return Evaluated(value, numbers)


def _value(node: ast.AST, ops: str, numbers: list[int], depth: int) -> Fraction:
    if depth > 50:
        raise ExpressionError("too deeply nested")
    if isinstance(node, ast.Constant) and type(node.value) is int:
        if not 0 <= node.value <= MAX_LITERAL:
            raise ExpressionError("literal out of range")
        numbers.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and _AST_OPS.get(type(node.op), "?") in ops:
        left = _value(node.left, ops, numbers, depth + 1)
        right = _value(node.right, ops, numbers, depth + 1)
        op = _AST_OPS[type(node.op)]
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "*":
            return left * right
        if right == 0:
            raise ExpressionError("division by zero")
        return left / right
    raise ExpressionError(f"{type(node).__name__} is not allowed")


def random_expression(
    rng: random.Random, numbers: list[int], ops: str, *, integer_steps: bool = True
) -> tuple[str, Fraction] | None:
    """A random binary tree over ``numbers`` (in the given order) with operators from ``ops``,
    rendered with minimal parentheses, and its value. With ``integer_steps`` every division
    must be exact; returns None if a division is not (or divides by zero) so callers redraw."""
    if len(numbers) == 1:
        return str(numbers[0]), Fraction(numbers[0])
    split = rng.randint(1, len(numbers) - 1)
    left = random_expression(rng, numbers[:split], ops, integer_steps=integer_steps)
    right = random_expression(rng, numbers[split:], ops, integer_steps=integer_steps)
    if left is None or right is None:
        return None
    op = rng.choice(ops)
    (ltext, lvalue), (rtext, rvalue) = left, right
    if op == "/" and (rvalue == 0 or (integer_steps and (lvalue / rvalue).denominator != 1)):
        return None
    value = {
        "+": lambda: lvalue + rvalue,
        "-": lambda: lvalue - rvalue,
        "*": lambda: lvalue * rvalue,
        "/": lambda: lvalue / rvalue,
    }[op]()
    return f"{_wrap(ltext, op, right_side=False)}{op}{_wrap(rtext, op, right_side=True)}", value


def flat_expression(rng: random.Random, numbers: list[int], ops: str) -> str:
    """``numbers`` joined by random operators, no parentheses: "23+7*2"."""
    parts = [str(numbers[0])]
    for n in numbers[1:]:
        parts += [rng.choice(ops), str(n)]
    return "".join(parts)


def _wrap(text: str, op: str, *, right_side: bool) -> str:
    """Parenthesise a child if its top-level operator binds looser than ``op`` (or equally, on
    the right of a non-associative "-" or "/")."""
    inner = _top_precedence(text)
    outer = _PRECEDENCE[op]
    if inner < outer or (right_side and inner == outer and op in "-/"):
        return f"({text})"
    return text


def _top_precedence(text: str) -> int:
    """Precedence of the loosest operator outside parentheses (3 for a bare number)."""
    depth, lowest = 0, 3
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and ch in _PRECEDENCE:
            lowest = min(lowest, _PRECEDENCE[ch])
    return lowest
