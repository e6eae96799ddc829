"""tune_gc: a higher first GC threshold and the start-up objects frozen; 0 leaves Python alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from stream.worker import tune_gc


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_the_threshold_is_raised_and_what_exists_is_frozen() -> None:
    gen1, gen2 = gc.get_threshold()[1:]
    tune_gc(50_000)
    assert gc.get_threshold() == (50_000, gen1, gen2)
    assert gc.get_freeze_count() > 0


def test_zero_leaves_pythons_defaults() -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    tune_gc(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
