"""Fuzzing the spec expression evaluator (docs/architecture.md#specs: no eval, no attribute access beyond the config).

Generated token strings and generated ASTs: `evaluate` returns a value or raises `ExpressionError`, nothing
else; the lookup is only ever asked for the plain names the expression spells (never a dunder, never an
attribute, never a builtin it could call); builtins that would import or touch files are replaced by traps
while it runs; and every evaluation ends quickly.
"""

from __future__ import annotations

import ast
import builtins
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge_core.spec.expressions import ExpressionError, evaluate

from ._limits import run_with_deadline

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONFIG = {
    "n_embd": 64,
    "n_head": 4,
    "n_inner": None,
    "eps": 1e-5,
    "act": "gelu_new",
    "layer_types": ["sliding_attention", "full_attention"],
    "rope": {"rope_type": "default", "factor": 2.0},
    "flag": True,
}
ALLOWED_FUNCTIONS = {"min", "max", "int", "round", "get"}
LITERAL_NAMES = {"None", "True", "False", "null", "true", "false"}
SECONDS_PER_EVALUATION = 1.0


class RecordingLookup:
    """A config lookup that records every name asked for and knows only plain, public names."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, name: str):
        self.asked.append(name)
        if not isinstance(name, str) or name.startswith("_") or name not in CONFIG:
            raise KeyError(name)
        return CONFIG[name]

    def __getattr__(self, name: str):  # the evaluator must never reach through the lookup object
        raise AssertionError(f"evaluator read attribute {name!r} of the lookup")


class Trap(Exception):
    pass


@contextmanager
def trapped_builtins() -> Iterator[list[str]]:
    """`__import__`, `open`, `eval` and `exec` record and fail while the evaluator runs."""
    hits: list[str] = []
    saved = {name: getattr(builtins, name) for name in ("__import__", "open", "eval", "exec")}

    def trap(name):
        def fail(*args, **kwargs):
            if name == "__import__" and (args[1] or {}).get("__name__") == "ast":
                return saved["__import__"](*args, **kwargs)  # ast.walk imports collections lazily
            hits.append(name)
            raise Trap(name)

        return fail

    try:
        for name in saved:
            setattr(builtins, name, trap(name))
        yield hits
    finally:
        for name, value in saved.items():
            setattr(builtins, name, value)


def names_spelled(text: str) -> set[str] | None:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def check(text: str) -> None:
    lookup = RecordingLookup()
    start = time.perf_counter()
    with trapped_builtins() as hits:
        try:
            value = evaluate(text, lookup)
        except ExpressionError as exc:
            value = exc
        except RecursionError:
            pytest.skip("deep nesting: covered by test_deeply_nested_expressions_are_an_expression_error")
    elapsed = time.perf_counter() - start
    assert hits == [], f"{text!r} reached builtins {hits}"
    assert elapsed < SECONDS_PER_EVALUATION, f"{text!r} took {elapsed:.2f}s"
    spelled = names_spelled(text) or set()
    for name in lookup.asked:
        assert not name.startswith("_"), f"{text!r} looked up private name {name!r}"
        assert name in spelled and name not in LITERAL_NAMES, f"{text!r} asked for {name!r}"
    if not isinstance(value, ExpressionError):
        # a value came out: then the expression used nothing the evaluator must refuse
        tree = ast.parse(text.strip(), mode="eval")
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.Attribute, ast.Lambda, ast.NamedExpr, ast.comprehension)), text
            if isinstance(node, ast.Name):
                assert not node.id.startswith("_"), text
            if isinstance(node, ast.Call):
                assert isinstance(node.func, ast.Name) and node.func.id in ALLOWED_FUNCTIONS, text
        assert isinstance(value, (int, float, complex, str, bool, list, tuple, dict, type(None))), type(value)


# --------------------------------------------------------------------------- token strings
TOKENS = [
    *CONFIG, "x", "os", "open", "eval", "exec", "getattr", "type", "object", "globals", "vars", "print",
    *ALLOWED_FUNCTIONS, *LITERAL_NAMES,
    "__import__", "__class__", "__bases__", "__subclasses__", "__globals__", "__builtins__", "_private",
    "0", "1", "2", "64", "-1", "0.5", "1e999", "10**9", "9" * 30, "0x10", "1_000", "1j",
    "'a'", '"sliding_attention"', "f'{n_embd}'", "b'x'", "...",
    "+", "-", "*", "/", "//", "%", "**", "@", "<<", ">>", "&", "|", "^", "~",
    "<", "<=", "==", "!=", ">", ">=", " is ", " is not ", " in ", " not in ", " and ", " or ", " not ",
    " if ", " else ", " lambda ", " for ", " in ", ":=", ":", ",", ".", "(", ")", "[", "]", "{", "}", ";", "\\", "\n",
]  # fmt: skip


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=25))
def test_token_strings_give_a_value_or_an_expression_error_and_touch_nothing(tokens):
    check("".join(tokens))


@FUZZ
@given(st.text(max_size=60))
def test_arbitrary_text_gives_a_value_or_an_expression_error(text):
    check(text)


# --------------------------------------------------------------------------- generated syntax trees
_names = st.sampled_from([*CONFIG, "missing", "__class__", "_x", "open", "__import__", *ALLOWED_FUNCTIONS])
_constants = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.sampled_from(["a", "", "full_attention"]), st.none()
)
_leaves = st.one_of(_names.map(lambda n: ast.Name(n, ast.Load())), _constants.map(ast.Constant))
_binops = st.sampled_from(
    [ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.BitAnd, ast.MatMult]
)
_cmpops = st.sampled_from([ast.Lt, ast.Eq, ast.NotEq, ast.Is, ast.In, ast.GtE])
_unaryops = st.sampled_from([ast.USub, ast.UAdd, ast.Not, ast.Invert])
_boolops = st.sampled_from([ast.And, ast.Or])
_attributes = st.sampled_from(["real", "__class__", "mro"])


def _extend(children):
    return st.one_of(
        st.builds(lambda a, op, b: ast.BinOp(a, op(), b), children, _binops, children),
        st.builds(lambda op, a: ast.UnaryOp(op(), a), _unaryops, children),
        st.builds(lambda a, op, b: ast.Compare(a, [op()], [b]), children, _cmpops, children),
        st.builds(lambda op, xs: ast.BoolOp(op(), xs), _boolops, st.lists(children, min_size=2, max_size=3)),
        st.builds(ast.IfExp, children, children, children),
        st.builds(lambda v, i: ast.Subscript(v, i, ast.Load()), children, children),
        st.builds(lambda v, a: ast.Attribute(v, a, ast.Load()), children, _attributes),
        st.builds(lambda f, args: ast.Call(f, args, []), children, st.lists(children, max_size=3)),
        st.builds(lambda body: ast.Lambda(ast.arguments([], [], None, [], [], None, []), body), children),
        st.builds(lambda xs: ast.Tuple(xs, ast.Load()), st.lists(children, max_size=3)),
        st.builds(lambda xs: ast.List(xs, ast.Load()), st.lists(children, max_size=3)),
        st.builds(lambda t, v: ast.NamedExpr(ast.Name(t, ast.Store()), v), st.sampled_from(["y", "n_embd"]), children),
    )  # fmt: skip


_trees = st.recursive(_leaves, _extend, max_leaves=12)


@FUZZ
@given(_trees)
def test_generated_syntax_trees_give_a_value_or_an_expression_error_and_touch_nothing(tree):
    try:
        text = ast.unparse(ast.fix_missing_locations(ast.Expression(tree)))
    except Exception:  # a tree ast cannot print is not an expression anyone can write
        return
    if len(text) > 500:
        return
    check(text)


# --------------------------------------------------------------------------- the edges found by hand
@pytest.mark.parametrize(
    "text",
    ["n_embd ** 65", "2 ** -65", "n_embd ** 100000000", "int(1e999)", "1 // 0", "1 % 0", "1.0 / 0"],
)
def test_big_exponents_overflow_and_division_by_zero_are_expression_errors(text):
    start = time.perf_counter()
    with pytest.raises(ExpressionError):
        evaluate(text, RecordingLookup())
    assert time.perf_counter() - start < SECONDS_PER_EVALUATION


def test_nested_powers_finish_quickly():
    status, detail = run_with_deadline(lambda: evaluate("(((((2**64)**64)**64)**64)**64)", {}), seconds=2.0)
    assert status == "raised" and detail.startswith("bridge_core.spec.expressions.ExpressionError"), (status, detail)


@pytest.mark.parametrize("text", ["-" * 400 + "1", "+" * 400 + "n_embd"])
def test_deeply_nested_expressions_are_an_expression_error(text):
    with pytest.raises(ExpressionError):
        evaluate(text, RecordingLookup())
