"""time_alternating: its structure, not its timings (the machine is shared)."""

import itertools

import pytest

from bnlib.timing import time_alternating


def test_calls_alternate_rotate_and_are_timed_by_the_given_clock():
    calls = []
    ticks = itertools.count()
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    t = time_alternating(fns, repeats=4, clock=lambda: next(ticks), warmup=2)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, untimed
    assert calls[6:] == list("abcbcacababc")  # alternating, rotated each repeat
    assert {k: v.tolist() for k, v in t.items()} == {k: [1, 1, 1, 1] for k in "abc"}


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_alternating({"a": lambda: None}, repeats=0)
