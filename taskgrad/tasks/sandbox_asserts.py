"""Assert-style tests, checked in the trainer on the values the sandboxed calls returned.

Dataset rows often test a program with asserts: ``assert f(2) == 7``, ``assert f(3) > 8``,
``assert abs(area(2.0) - 12.566) < 1e-3``, ``assert set(common([1, 2], [2])) == {2}``. Running
such an assert inside the sandbox would let the program subvert it (it runs in the same
process, may rebind anything the assert uses, or forge the outcome). So no check ever runs
there: ``compile_assert`` finds the assert's calls of the program's function, each of which
must have literal arguments; those calls run in the sandbox like any other test input and come
back as plain data; ``check_assert`` then evaluates the rest of the assert *here*, with a small
interpreter over plain values and a fixed set of operations. An assert outside that set is
rejected when the dataset is loaded (``dataset.parse_tests`` names file, row and test), never
run somewhere weaker.

Supported: literals (numbers, strings, None / True / False, lists, tuples, dicts, sets), calls
of the program's function with literal positional arguments, comparisons (``==``, ``!=``,
``<``, ``<=``, ``>``, ``>=``, ``in``, ``not in``, ``is`` / ``is not`` None), ``and`` / ``or`` /
``not``, unary ``-`` / ``+``, ``+ - * / // %`` on numbers (``+`` also joins two strings or two
lists), subscripts with literal indices or slices, and the functions ``abs``, ``len``,
``sorted``, ``set``, ``list``, ``tuple``, ``min``, ``max``, ``sum``, ``round``, ``all``,
``any``, ``bool``, ``int``, ``float``, ``str`` and ``math.isclose`` (keyword arguments with
literal values only). Values follow the sandbox's JSON semantics: tuples are lists, and ``==``
is ``sandbox.same_value`` (``2.0 == 2``, but ``True != 1``).
"""

from __future__ import annotations

import ast
import functools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from taskgrad.tasks.sandbox import is_plain, same_value


class AssertFormError(ValueError):
    """The assert uses something the trainer cannot evaluate outside the sandbox."""


@dataclass(frozen=True)
class CompiledAssert:
    """An assert split into the calls the sandbox makes (``function(*args)`` for each item of
    ``calls``, in order) and an expression over their values that the trainer evaluates."""

    source: str
    function: str | None  # the program's function the assert calls (None: it calls none)
    calls: tuple[tuple[Any, ...], ...]
    expr: ast.expr


def _sorted(values: Any, *, reverse: bool = False) -> list:
    return sorted(values, reverse=reverse)


_FUNCTIONS: dict[str, tuple[Callable[..., Any], frozenset[str]]] = {
    "abs": (abs, frozenset()),
    "len": (len, frozenset()),
    "sorted": (_sorted, frozenset({"reverse"})),
    "set": (set, frozenset()),
    "list": (list, frozenset()),
    "tuple": (list, frozenset()),  # JSON semantics: a tuple is a list
    "min": (min, frozenset()),
    "max": (max, frozenset()),
    "sum": (sum, frozenset()),
    "round": (round, frozenset()),
    "all": (all, frozenset()),
    "any": (any, frozenset()),
    "bool": (bool, frozenset()),
    "int": (int, frozenset()),
    "float": (float, frozenset()),
    "str": (str, frozenset()),
    "math.isclose": (math.isclose, frozenset({"rel_tol", "abs_tol"})),
}
_NUMERIC = {
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_ORDER = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}


class _Slot(ast.expr):
    """Stands for the value of the ``index``-th call of the program's function."""

    _fields = ("index",)


class _Failed(Exception):
    """Evaluation cannot go on (a call raised, a type error...): the assert fails."""


def compile_assert(source: str, entry: str | None = None) -> CompiledAssert:
    """Split ``source`` (one assert statement) as described in the module docstring.

    ``entry``: the name of the program's function, if known; otherwise the one non-builtin
    function the assert calls. Raises AssertFormError (one line) for anything else."""
    return _compile(source, entry)


def check_assert(compiled: CompiledAssert, outcomes: Sequence[tuple[bool, Any]]) -> bool:
    """Whether the assert holds, given the sandbox's ``(ok, value)`` for each of its calls.
    Never raises for anything the values are: a call that raised, or a value of the wrong
    type for an operation, makes the assert fail."""
    if len(outcomes) != len(compiled.calls):
        return False
    try:
        return bool(_truth(_eval(compiled.expr, outcomes)))
    except (_Failed, TypeError, ValueError, ArithmeticError, RecursionError, MemoryError):
        return False


# -- compilation -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _compile(source: str, entry: str | None) -> CompiledAssert:
    if type(source) is not str:
        raise AssertFormError("the test must be a string")
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise AssertFormError("not valid Python") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise AssertFormError("must be one assert statement")
    compiler = _Compiler(entry)
    expr = compiler.visit(tree.body[0].test)
    return CompiledAssert(source, compiler.entry, tuple(compiler.calls), expr)


def _literal(node: ast.expr) -> Any:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        raise AssertFormError(f"needs literal arguments, got {_show(node)}") from None
    if not is_plain(value):
        raise AssertFormError(f"needs plain literal arguments, got {_show(node)}")
    return value


def _show(node: ast.AST) -> str:
    text = ast.unparse(node)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _function_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "math"
    ):
        return f"math.{node.attr}"
    return None


class _Compiler:
    def __init__(self, entry: str | None) -> None:
        self.entry = entry
        self.calls: list[tuple[Any, ...]] = []

    def visit(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float, str, bool, type(None)):
                raise AssertFormError(f"uses the literal {_show(node)}")
            return node
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            node.elts = [self.visit(e) for e in node.elts]
            return node
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise AssertFormError("uses ** in a dict")
            node.keys = [self.visit(k) for k in node.keys]  # type: ignore[misc]
            node.values = [self.visit(v) for v in node.values]
            return node
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub | ast.UAdd):
            node.operand = self.visit(node.operand)
            return node
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, *_NUMERIC)):
            node.left, node.right = self.visit(node.left), self.visit(node.right)
            return node
        if isinstance(node, ast.BoolOp):
            node.values = [self.visit(v) for v in node.values]
            return node
        if isinstance(node, ast.Compare):
            for op, right in zip(node.ops, node.comparators, strict=True):
                if isinstance(op, ast.Is | ast.IsNot) and not (
                    isinstance(right, ast.Constant) and right.value is None
                ):
                    raise AssertFormError("uses 'is' with something other than None")
            node.left = self.visit(node.left)
            node.comparators = [self.visit(c) for c in node.comparators]
            return node
        if isinstance(node, ast.Subscript):
            node.value = self.visit(node.value)
            node.slice = self._index(node.slice)
            return node
        if isinstance(node, ast.Call):
            return self._call(node)
        raise AssertFormError(
            f"uses {_show(node)} ({type(node).__name__}), which the trainer cannot evaluate "
            "outside the sandbox"
        )

    def _index(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Slice):
            for part in (node.lower, node.upper, node.step):
                if part is not None and type(_literal(part)) is not int:
                    raise AssertFormError(f"slices need int literals, got {_show(part)}")
            return node
        if type(_literal(node)) not in (int, str):
            raise AssertFormError(f"indexes need an int or str literal, got {_show(node)}")
        return node

    def _call(self, node: ast.Call) -> ast.expr:
        name = _function_name(node.func)
        if name is None:
            raise AssertFormError(f"calls {_show(node.func)}")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise AssertFormError(f"uses *arguments in {_show(node)}")
        if name in _FUNCTIONS and name != self.entry:
            allowed = _FUNCTIONS[name][1]
            for keyword in node.keywords:
                if keyword.arg not in allowed:
                    raise AssertFormError(f"calls {name} with keyword {keyword.arg!r}")
                keyword.value = ast.Constant(_literal(keyword.value))
            node.args = [self.visit(a) for a in node.args]
            return node
        if name.startswith("math."):
            raise AssertFormError(f"calls {name} (of math, only isclose is supported)")
        if self.entry is None:
            self.entry = name
        elif name != self.entry:
            raise AssertFormError(f"calls {name!r}, but the tested function is {self.entry!r}")
        if node.keywords:
            raise AssertFormError(f"calls {name} with keyword arguments")
        self.calls.append(tuple(_literal(a) for a in node.args))
        return _Slot(index=len(self.calls) - 1)


# -- evaluation --------------------------------------------------------------------------------


def _truth(value: Any) -> bool:
    if type(value) not in (bool, int, float, str, list, dict, set, type(None)):
        raise _Failed
    return bool(value)


def _number(value: Any) -> int | float:
    if type(value) not in (int, float):
        raise _Failed
    return value


def _equal(a: Any, b: Any) -> bool:
    if type(a) is set or type(b) is set:
        return type(a) is set and type(b) is set and a == b
    return same_value(a, b)


def _eval(node: ast.expr, outcomes: Sequence[tuple[bool, Any]]) -> Any:
    if isinstance(node, _Slot):
        ok, value = outcomes[node.index]
        if not ok:
            raise _Failed  # the call raised, or returned something that is not plain data
        return value
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List | ast.Tuple):
        return [_eval(e, outcomes) for e in node.elts]
    if isinstance(node, ast.Set):
        return {_eval(e, outcomes) for e in node.elts}
    if isinstance(node, ast.Dict):
        pairs = zip(node.keys, node.values, strict=True)
        return {_eval(k, outcomes): _eval(v, outcomes) for k, v in pairs}  # type: ignore[arg-type]
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, outcomes)
        if isinstance(node.op, ast.Not):
            return not _truth(operand)
        return -_number(operand) if isinstance(node.op, ast.USub) else _number(operand)
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, outcomes), _eval(node.right, outcomes)
        if isinstance(node.op, ast.Add) and type(left) is type(right) and type(left) in (str, list):
            return left + right
        operation = operator.add if isinstance(node.op, ast.Add) else _NUMERIC[type(node.op)]
        return operation(_number(left), _number(right))
    if isinstance(node, ast.BoolOp):
        value = None
        for part in node.values:
            value = _eval(part, outcomes)
            if _truth(value) == isinstance(node.op, ast.Or):
                return value
        return value
    if isinstance(node, ast.Compare):
        left = _eval(node.left, outcomes)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, outcomes)
            if not _compare(op, left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Subscript):
        value = _eval(node.value, outcomes)
        if type(value) not in (list, str, dict):
            raise _Failed
        if isinstance(node.slice, ast.Slice):
            bounds = (ast.literal_eval(p) if p else None for p in (node.slice.lower,
                      node.slice.upper, node.slice.step))  # fmt: skip
            return value[slice(*bounds)]
        return value[ast.literal_eval(node.slice)]
    if isinstance(node, ast.Call):
        function, _ = _FUNCTIONS[_function_name(node.func)]  # type: ignore[index]
        args = [_eval(a, outcomes) for a in node.args]
        keywords = {k.arg: k.value.value for k in node.keywords}  # type: ignore[attr-defined]
        return function(*args, **keywords)
    raise _Failed  # unreachable: compilation admits nothing else


def _compare(op: ast.cmpop, left: Any, right: Any) -> bool:
    if isinstance(op, ast.Eq):
        return _equal(left, right)
    if isinstance(op, ast.NotEq):
        return not _equal(left, right)
    if isinstance(op, ast.Is):
        return left is None
    if isinstance(op, ast.IsNot):
        return left is not None
    if isinstance(op, ast.In | ast.NotIn):
        if type(right) not in (list, str, dict, set):
            raise _Failed
        # in a list: by JSON equality, like ==; in a str, dict or set: Python's own test
        found = any(_equal(left, x) for x in right) if type(right) is list else left in right
        return found if isinstance(op, ast.In) else not found
    return bool(_ORDER[type(op)](left, right))
