"""Safe evaluation of the small arithmetic expressions specs use for config fields.

`n_embd // n_head` or `n_inner or 4 * n_embd` are parsed with `ast` and walked by hand: only
literals, config attribute names, arithmetic, comparisons, `and/or/not`, `x if c else y`,
subscripts of config mappings and lists (`layer_types[0]`), and the functions `min`, `max`, `int`,
`round` and `get(mapping, key, default)` are allowed. There is no `eval`, no attribute access, no
call of anything else. `recording_branches()` notes which side of each `x if c else y` an evaluation
took (the conformance `variant_coverage` check), without changing any result.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ..errors import BridgeCoreError

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,  # `layer in mlp_only_layers` (per-layer MLP kinds)
    ast.NotIn: lambda a, b: a not in b,
}


def _get(container: Any, key: Any, default: Any = None) -> Any:
    if not isinstance(container, dict):
        raise TypeError(f"get() needs a mapping, got {type(container).__name__}")
    return container.get(key, default)


_FUNCTIONS: dict[str, Callable[..., Any]] = {"min": min, "max": max, "int": int, "round": round, "get": _get}
_LITERAL_NAMES = {"None": None, "True": True, "False": False, "null": None, "true": True, "false": False}
_MAX_EXPRESSION_LENGTH = 500
_MAX_POWER_EXPONENT = 64
_MAX_BITS = 4096  # config arithmetic never needs more; unbounded ints would let `(2**64)**64...` run forever
_MAX_DEPTH = 32


class ExpressionError(BridgeCoreError, ValueError):
    """An expression is not allowed or cannot be evaluated; `.reason` says why."""

    def __init__(self, expression: str, reason: str):
        self.expression = expression
        self.reason = reason
        super().__init__(f"cannot evaluate '{expression}': {reason}")


BranchKey = tuple[str, int, int]
"""(expression, line, column) of one `x if c else y` node inside an expression."""

_BRANCHES: ContextVar[dict[BranchKey, set[bool]] | None] = ContextVar("bridge_core_branches", default=None)


@contextmanager
def recording_branches() -> Iterator[dict[BranchKey, set[bool]]]:
    """Within the block, every conditional evaluated adds the side it took (True: `x`, False: `y`)."""
    taken: dict[BranchKey, set[bool]] = {}
    token = _BRANCHES.set(taken)
    try:
        yield taken
    finally:
        _BRANCHES.reset(token)


def conditionals(expression: str) -> list[BranchKey]:
    """The `x if c else y` nodes of an expression (none for a string that is not a valid expression)."""
    try:
        tree = _parse(expression)
    except ExpressionError:
        return []
    return [(expression, n.lineno, n.col_offset) for n in ast.walk(tree) if isinstance(n, ast.IfExp)]


def evaluate(expression: str, lookup: Callable[[str], Any] | Mapping[str, Any]) -> Any:
    """Evaluate `expression`, resolving bare names with `lookup` (a mapping or a function).

    `lookup` raising `KeyError` means the name does not exist; that becomes an `ExpressionError`.
    """
    tree = _parse(expression)
    resolve = lookup.__getitem__ if isinstance(lookup, Mapping) else lookup
    return _Evaluator(expression, resolve).visit(tree.body)


def _parse(expression: str) -> ast.Expression:
    if not isinstance(expression, str):
        raise ExpressionError(repr(expression), "an expression must be a string")
    if len(expression) > _MAX_EXPRESSION_LENGTH:
        raise ExpressionError(expression[:40] + "...", f"longer than {_MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(expression, f"not valid syntax ({exc.msg})") from None
    except ValueError as exc:  # e.g. null bytes
        raise ExpressionError(expression, str(exc)) from None
    except (RecursionError, MemoryError):
        raise ExpressionError(expression, "nested too deeply to parse") from None
    if _depth(tree) > _MAX_DEPTH:
        raise ExpressionError(expression, f"nested more than {_MAX_DEPTH} levels deep")
    nodes = list(ast.walk(tree))  # every node, so a branch that is never taken is checked too
    for node in nodes:  # the escapes first, with the most specific message
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise ExpressionError(expression, f"name '{node.id}' starts with '_'; private names are not allowed")
        if isinstance(node, ast.Attribute):
            raise ExpressionError(expression, "attribute access ('.') is not allowed")
    for node in nodes:
        if not isinstance(node, _ALLOWED_NODES):
            raise ExpressionError(
                expression, f"'{type(node).__name__}' is not allowed (only arithmetic on config fields)"
            )
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS):
            raise ExpressionError(expression, f"only {sorted(_FUNCTIONS)} may be called")
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
            raise ExpressionError(expression, "slices are not allowed")
    return tree


_ALLOWED_NODES: tuple[type, ...] = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.And, ast.Or,
    ast.Compare, ast.IfExp, ast.Call, ast.Subscript,
    *_BINARY, *_UNARY, *_COMPARE,
)  # fmt: skip


def _depth(tree: ast.AST) -> int:
    """Nesting depth of a syntax tree, without recursion (so a deep tree cannot overflow the stack)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


class _Evaluator:
    def __init__(self, expression: str, resolve: Callable[[str], Any]):
        self.expression = expression
        self.resolve = resolve

    def fail(self, reason: str) -> ExpressionError:
        return ExpressionError(self.expression, reason)

    def visit(self, node: ast.AST) -> Any:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            raise self.fail(f"'{type(node).__name__}' is not allowed (only arithmetic on config fields)")
        return method(node)

    def visit_Constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, (int, float, str, bool)) or node.value is None:
            return node.value
        raise self.fail(f"literal of type {type(node.value).__name__} is not allowed")

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id in _LITERAL_NAMES:
            return _LITERAL_NAMES[node.id]
        try:
            return self.resolve(node.id)
        except KeyError:
            raise self.fail(f"the config has no field '{node.id}'") from None

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise self.fail(f"operator '{type(node.op).__name__}' is not allowed")
        left, right = self.visit(node.left), self.visit(node.right)
        self._check_number(left)
        self._check_number(right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_POWER_EXPONENT:
            raise self.fail(f"exponent {right} is too large")
        if isinstance(node.op, ast.Pow) and isinstance(left, int) and left.bit_length() * abs(right) > _MAX_BITS:
            raise self.fail("the result would be too large")
        big = isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > _MAX_BITS
        if isinstance(node.op, ast.Mult) and big:
            raise self.fail("the result would be too large")
        try:
            return op(left, right)
        except (ArithmeticError, TypeError, ValueError) as exc:
            raise self.fail(f"{type(exc).__name__}: {exc}") from None

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        op = _UNARY.get(type(node.op))
        if op is None:
            raise self.fail(f"operator '{type(node.op).__name__}' is not allowed")
        value = self.visit(node.operand)
        if not isinstance(node.op, ast.Not):
            self._check_number(value)
        return op(value)

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        is_and = isinstance(node.op, ast.And)
        value: Any = None
        for operand in node.values:
            value = self.visit(operand)
            if (not value) if is_and else value:
                return value
        return value

    def visit_Compare(self, node: ast.Compare) -> Any:
        left = self.visit(node.left)
        for op_node, comparator in zip(node.ops, node.comparators, strict=False):
            op = _COMPARE.get(type(op_node))
            if op is None:
                raise self.fail(f"comparison '{type(op_node).__name__}' is not allowed")
            right = self.visit(comparator)
            try:
                if not op(left, right):
                    return False
            except TypeError as exc:
                raise self.fail(f"TypeError: {exc}") from None
            left = right
        return True

    def visit_Subscript(self, node: ast.Subscript) -> Any:
        container = self.visit(node.value)
        if isinstance(node.slice, ast.Slice):
            raise self.fail("slices are not allowed")
        key = self.visit(node.slice)
        if not isinstance(container, (dict, list, tuple)):
            raise self.fail(f"cannot index a {type(container).__name__}")
        try:
            return container[key]
        except (KeyError, IndexError, TypeError) as exc:
            raise self.fail(f"no item {key!r} ({type(exc).__name__})") from None

    def visit_IfExp(self, node: ast.IfExp) -> Any:
        chosen = bool(self.visit(node.test))
        taken = _BRANCHES.get()
        if taken is not None:
            taken.setdefault((self.expression, node.lineno, node.col_offset), set()).add(chosen)
        return self.visit(node.body) if chosen else self.visit(node.orelse)

    def visit_Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            raise self.fail(f"only {sorted(_FUNCTIONS)} may be called")
        if node.keywords or not node.args:
            raise self.fail(f"{node.func.id}() takes positional arguments only")
        args = [self.visit(arg) for arg in node.args]
        try:
            return _FUNCTIONS[node.func.id](*args)
        except (TypeError, ValueError, OverflowError) as exc:
            raise self.fail(f"{type(exc).__name__}: {exc}") from None

    def _check_number(self, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"arithmetic on a non-number ({value!r})")
