"""The grader of chapter 7a's dropout exercise: the reader predicts the variance shift of a
BN layer placed after dropout (Li et al. 2019), and :func:`check_variance_shift` compares
the prediction with the ratio measured through ``torch.nn.Dropout`` and
:class:`bnlib.torch.BatchNorm1d` (the CS231n pattern: a provided checker prints a
verdict)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import bnlib.torch as bt

from ..audit import CheckResult

__all__ = ["check_variance_shift", "measured_variance_shift"]

# (p, mean, variance): zero and non-zero means, light and heavy dropout
CASES = ((0.5, 0.0, 1.0), (0.5, 1.0, 1.0), (0.2, 2.0, 0.5), (0.8, -1.0, 2.0))


def measured_variance_shift(p: float, mean: float, var: float, seed: int = 0,
                            batches: int = 50, batch: int = 1024, features: int = 16
                            ) -> float:
    r"""BN's running variance after dropout, over the variance BN meets at inference.

    Inputs ``x ~ N(mean, var)`` pass through ``nn.Dropout(p)`` into a
    :class:`bnlib.torch.BatchNorm1d` with a cumulative average (``momentum=None``) for
    ``batches`` training batches; the result is the mean over features of
    ``running_var / Var(x)``, which :eq:`ch7a-variance-shift` predicts to be
    :math:`\big((v + \mu^2)/(1 - p) - \mu^2\big) / v`.

    Args:
        p, mean, var: dropout rate, input mean and variance.
        seed: seeds the inputs and the dropout masks. Default: ``0``.
        batches, batch, features: the training data. Defaults: ``50``, ``1024``, ``16``.

    Returns:
        The measured ratio (float64 statistics).

    Example:
        >>> round(measured_variance_shift(0.5, 0.0, 1.0), 1)
        2.0
    """
    # inputs and masks from different streams: one seed for both would correlate them
    g = torch.Generator().manual_seed(2**20 + seed)
    torch.manual_seed(seed)  # the dropout masks
    dropout = nn.Dropout(p)
    bn = bt.BatchNorm1d(features, momentum=None, affine=False, dtype=torch.float64)
    for _ in range(batches):
        x = mean + var ** 0.5 * torch.randn(batch, features, generator=g,
                                             dtype=torch.float64)
        bn(dropout(x))
    return float(bn.running_var.mean() / var)


def check_variance_shift(fn: Callable[[float, float, float], float], tol: float = 0.03
                         ) -> CheckResult:
    """Grade a reader's ``fn(p, mean, var) -> predicted ratio`` against
    :func:`measured_variance_shift` on four cases (zero and non-zero means).

    Args:
        fn: the reader's prediction.
        tol: largest allowed relative difference; the measurement's own sampling error is
            below 1%. Default: ``0.03``.

    Returns:
        A :class:`~bnlib.audit.CheckResult` whose ``value`` is the largest relative
        difference.

    Example:
        >>> ratio = lambda p, mu, v: ((v + mu**2) / (1 - p) - mu**2) / v
        >>> check_variance_shift(ratio).passed
        True
    """
    worst = 0.0
    for p, mean, var in CASES:
        try:
            predicted = float(fn(p, mean, var))
        except Exception as exc:  # the reader's code: report it, do not crash
            return CheckResult("variance_shift", False,
                               f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
        measured = measured_variance_shift(p, mean, var)
        worst = max(worst, abs(predicted - measured) / measured)
    passed = worst <= tol
    verdict = "matches" if passed else "differs from"
    return CheckResult("variance_shift", passed,
                       f"{verdict} the ratio measured through nn.Dropout and BatchNorm1d "
                       f"on {len(CASES)} cases (means 0 and not 0): largest relative "
                       f"difference {'below 3%' if passed else f'{worst:.0%}'}", worst)
