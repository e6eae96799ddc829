"""models.frozen.fast_init: the same constructor as the dataclass's, frozen as before."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.events import Touchpoint
from models.frozen import fast_init
from models.journey_map import load_map
from models.reducer import fold
from models.state import CustomerState, Drift, NudgeRef, Stall, Transition

from .strategies import journeys

FAST = (Touchpoint, CustomerState, Transition, Stall, Drift, NudgeRef)


@fast_init
@dataclass(frozen=True, slots=True)
class Sample:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Plain:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)


@pytest.mark.parametrize("cls", FAST)
def test_the_core_classes_use_it(cls: type) -> None:
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
    assert "_set0" in cls.__init__.__globals__


@given(st.integers(), st.text(), st.lists(st.integers()))
def test_same_values_as_the_dataclass_constructor(a: int, b: str, c: list[int]) -> None:
    for args, kwargs in (((a,), {}), ((a, b), {}), ((a,), {"c": c}), ((), {"a": a, "b": b, "c": c})):
        fast, plain = Sample(*args, **kwargs), Plain(*args, **kwargs)
        assert dataclasses.astuple(fast) == dataclasses.astuple(plain)


def test_defaults_and_fresh_factories() -> None:
    one, two = Sample(1), Sample(2)
    assert (one.b, one.c) == ("b", [])
    assert one.c is not two.c


def test_still_frozen_and_still_checks_arguments() -> None:
    s = Sample(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.a = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Sample()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Sample(1, d=3)  # type: ignore[call-arg]
    assert dataclasses.replace(s, b="x") == Sample(1, "x")


@pytest.mark.parametrize("cls", FAST)
def test_each_argument_lands_in_its_own_field(cls: type) -> None:
    # A distinct object per field, by position and by keyword: a constructor
    # that swapped, dropped or defaulted a field fails here.
    fields = dataclasses.fields(cls)
    marks = [object() for _ in fields]
    for built in (cls(*marks), cls(**{f.name: m for f, m in zip(fields, marks, strict=True)})):
        assert [getattr(built, f.name) for f in fields] == marks
        assert all(getattr(built, f.name) is m for f, m in zip(fields, marks, strict=True))


@given(journeys())
def test_folded_states_rebuild_equal(items: list) -> None:  # type: ignore[type-arg]
    for state in fold(load_map(), items).values():
        values = {f.name: getattr(state, f.name) for f in dataclasses.fields(CustomerState)}
        assert CustomerState(**values) == state
        assert dataclasses.replace(state) == state


def test_refuses_what_it_cannot_build() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True)
    class Derived:
        a: int
        b: int = field(init=False, default=0)

    for cls in (Mutable, NoSlots, PostInit, Derived):
        with pytest.raises(TypeError):
            fast_init(cls)
