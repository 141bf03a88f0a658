"""`records.record` behaves as `dataclasses.dataclass` does, with nothing compiled per class.

Each class below is declared twice, once with each decorator, and every observable behaviour is
compared with the standard library's: construction (positional, keyword, defaults, factories and
every misuse), repr, equality and hashing, frozenness, `fields` / `replace` / `asdict`.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import subprocess
import sys
import textwrap
from dataclasses import field

import pytest

from bridge_core.records import record


def _pair(frozen: bool, eq: bool, repr: bool = True) -> tuple[type, type]:
    def declare(decorate):
        @decorate(frozen=frozen, eq=eq, repr=repr)
        class Base:
            a: int
            b: str = "b"

        @decorate(frozen=frozen, eq=eq, repr=repr)
        class Thing(Base):
            c: list = field(default_factory=list)
            hidden: dict = field(default_factory=dict, repr=False, compare=False)
            late: int = field(default=7, init=False)

        return Thing

    return declare(dataclasses.dataclass), declare(record)


MODES = [(frozen, eq) for frozen in (True, False) for eq in (True, False)]


def _outcome(fn):
    try:
        value = fn()
    except Exception as error:  # the comparison is of what was raised
        return type(error), str(error).split(".__init__()")[-1]
    return value


@pytest.mark.parametrize(("frozen", "eq"), MODES)
@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1,), {}),
        ((1, "x", [2]), {}),
        ((), {"a": 1, "c": [3]}),
        ((1,), {"hidden": {"k": 1}}),
        ((), {}),  # missing a
        ((1, "x", [2], {}, 9), {}),  # too many positional
        ((1,), {"a": 2}),  # a twice
        ((1,), {"nope": 2}),  # unknown keyword
        ((1,), {"late": 2}),  # not an init field
    ],
)
def test_construction_matches_dataclass(frozen, eq, args, kwargs):
    reference, ours = _pair(frozen, eq)
    want = _outcome(lambda: reference(*args, **dict(kwargs)))
    got = _outcome(lambda: ours(*args, **dict(kwargs)))
    if isinstance(want, tuple):
        assert got == want
        return
    assert not isinstance(got, tuple), got
    assert {f.name: getattr(got, f.name) for f in dataclasses.fields(got)} == {
        f.name: getattr(want, f.name) for f in dataclasses.fields(want)
    }
    assert repr(got).replace("declare.<locals>.", "") == repr(want).replace("declare.<locals>.", "")


def test_default_factories_are_called_per_instance():
    _, ours = _pair(frozen=True, eq=True)
    one, two = ours(1), ours(1)
    assert one.c == [] and one.c is not two.c


@pytest.mark.parametrize(("frozen", "eq"), MODES)
def test_equality_and_hashing_match_dataclass(frozen, eq):
    reference, ours = _pair(frozen, eq)
    for cls in (reference, ours):
        x, y, z = cls(1, "x", (2,)), cls(1, "x", (2,), hidden={"ignored": 1}), cls(2)
        assert (x == y) is eq and (x == x) and x != z
        assert (cls.__hash__ is None) is (eq and not frozen)
    if frozen and eq:
        assert hash(ours(1, "x", (2,))) == hash(ours(1, "x", (2,), hidden={"other": 2}))
    if not eq:
        x = ours(1)
        assert hash(x) == object.__hash__(x)


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_matches_dataclass(frozen):
    for cls in _pair(frozen, eq=True):
        item = cls(1)
        if frozen:
            with pytest.raises(dataclasses.FrozenInstanceError):
                item.a = 2
            with pytest.raises(dataclasses.FrozenInstanceError):
                del item.b
            assert item.a == 1
        else:
            item.a = 2
            assert item.a == 2


def test_fields_replace_asdict_and_match_args():
    reference, ours = _pair(frozen=True, eq=True)
    assert [f.name for f in dataclasses.fields(ours)] == [f.name for f in dataclasses.fields(reference)]
    item = ours(1, "x", [2])
    changed = dataclasses.replace(item, b="y")
    assert (changed.a, changed.b, changed.c) == (1, "y", [2]) and item.b == "x"
    assert dataclasses.asdict(item) == dataclasses.asdict(reference(1, "x", [2]))
    assert ours.__match_args__ == reference.__match_args__


def test_a_method_the_class_writes_is_kept():
    @record(frozen=True, eq=True)
    class Custom:
        a: int

        def __repr__(self) -> str:
            return "mine"

        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = object.__hash__

    assert repr(Custom(1)) == "mine" and Custom(1) == Custom(2)
    item = Custom(1)
    assert hash(item) == object.__hash__(item)


def test_post_init_runs_and_kw_only_is_refused():
    for decorate in (dataclasses.dataclass, record):

        @decorate(frozen=True)
        class Checked:
            a: int

            def __post_init__(self) -> None:
                if self.a < 0:
                    raise ValueError("negative")

        assert Checked(1).a == 1
        with pytest.raises(ValueError, match="negative"):
            Checked(-1)
    with pytest.raises(TypeError, match="kw_only"):

        @record
        class KeywordOnly:
            a: int = field(kw_only=True)


def test_recursive_repr_does_not_loop():
    @record
    class Node:
        child: object = None

    node = Node()
    node.child = node
    assert repr(node).endswith(".Node(child=...)")


def test_a_first_bridge_compiles_no_dataclass_method():
    """The point of `record`: nothing a bridge imports compiles per-class methods with `exec`.
    Generated methods have no file (`<string>`); this failed while the records were dataclasses."""
    probe = textwrap.dedent(
        """
        import inspect, sys
        from transformers import GPT2Config, GPT2LMHeadModel
        from bridge_core import Bridge
        Bridge.from_hf(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32)))
        compiled = []
        for name, module in list(sys.modules.items()):
            if not name.startswith("bridge_core"):
                continue
            for value in vars(module).values():
                if inspect.isclass(value) and value.__module__ == name and "__dataclass_fields__" in vars(value):
                    for method in vars(value).values():
                        code = getattr(method, "__code__", None)
                        if code is not None and code.co_filename == "<string>":
                            compiled.append(f"{name}.{value.__qualname__}.{method.__name__}")
        print(compiled)
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


@record(frozen=True)
class _Picklable:  # module level, so pickle can find it
    a: int
    b: tuple = field(default_factory=tuple)


@pytest.mark.parametrize("clone", [copy.copy, copy.deepcopy, lambda x: pickle.loads(pickle.dumps(x))])
def test_copies_and_pickles_round_trip(clone):
    item = _Picklable(1, (2,))
    twin = clone(item)
    assert twin == item and hash(twin) == hash(item) and twin is not item
    with pytest.raises(dataclasses.FrozenInstanceError):
        twin.a = 3
