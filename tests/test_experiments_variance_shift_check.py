"""Chapter 7a's exercise grader (bnlib.experiments.variance_shift_check): the measurement
follows the variance-shift formula, the correct prediction passes, and the plausible
mistakes (ignoring the mean, no shift at all) fail."""

import pytest

from bnlib.experiments.variance_shift_check import (
    CASES,
    check_variance_shift,
    measured_variance_shift,
)


def right(p, mu, v):
    return ((v + mu**2) / (1 - p) - mu**2) / v


@pytest.mark.parametrize("p, mu, v", CASES)
def test_measurement_follows_the_formula(p, mu, v):
    assert measured_variance_shift(p, mu, v) == pytest.approx(right(p, mu, v), rel=0.01)


def test_reference_passes_and_mistakes_fail():
    assert check_variance_shift(right).passed
    assert not check_variance_shift(lambda p, mu, v: 1 / (1 - p)).passed  # mean ignored
    assert not check_variance_shift(lambda p, mu, v: 1.0).passed  # no shift
    failed = check_variance_shift(lambda p, mu, v: 1 / 0)
    assert not failed.passed and "ZeroDivisionError" in failed.evidence
