"""The grader of chapter 7c's exercise: the reader writes the pairwise merge of per-batch
count, mean and sum of squared deviations (Chan, Golub & LeVeque 1982), the step with which
PreciseBN (:func:`bnlib.torch.recompute_bn_stats`) and synchronized batch norm pool
statistics, and :func:`check_merge_moments` compares it with the statistics of the pooled
values (the CS231n pattern: a provided checker prints a verdict)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

import bnlib.torch as bt

from ..audit import CheckResult
from .data import load_digits_split

__all__ = ["check_merge_moments", "label_sorted_batches"]


def _moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-column count, mean and sum of squared deviations of ``x`` ``(n, C)``, float64."""
    mean = x.mean(dim=0)
    return (torch.full_like(mean, float(len(x))), mean,
            (x - mean).square().sum(dim=0))


def label_sorted_batches(batch_size: int = 4, features: int = 16, seed: int = 0
                         ) -> tuple[nn.Sequential, list[Tensor]]:
    """The digits' training inputs sorted by label, in batches of ``batch_size`` rows (the
    last one shorter), and a float64 ``Linear(64, features, bias=False) -> BatchNorm1d``
    with fixed random weights: the activations a first BN layer sees.

    Example:
        >>> model, batches = label_sorted_batches()
        >>> len(batches), tuple(batches[-1].shape)
        (252, (2, 64))
    """
    split = load_digits_split()
    order = torch.argsort(split.y_train, stable=True)
    x = split.x_train[order].to(torch.float64)
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(x.shape[1], features, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(torch.randn(features, x.shape[1], generator=g,
                                        dtype=torch.float64))
    return nn.Sequential(linear, bt.BatchNorm1d(features).double()), list(x.split(batch_size))


def _random_cases():
    """``(name, a, b)`` value sets ``(n, 5)``: unequal sizes, a set of one value, and a
    mean large against the spread (where sums of squares lose their digits)."""
    g = torch.Generator().manual_seed(0)
    offsets = torch.tensor([-2.0, 0.0, 1.0, 3.0, 10.0], dtype=torch.float64)

    def draw(n, shift=0.0, scale=1.0):
        return offsets + shift + scale * torch.randn(n, 5, generator=g, dtype=torch.float64)

    yield "sizes 3 and 7", draw(3), draw(7, 1.5, 2.0)
    yield "a set of one value", draw(1, -1.0), draw(9)
    yield "equal sizes", draw(16, 0.5), draw(16, -0.5, 0.5)
    yield "mean 1e5, spread 1", draw(20, 1e5), draw(30, 1e5 + 0.5)


def _error(got, ref) -> float:
    """Largest error of ``(count, mean, m2)``: count exact, mean in units of the pooled
    standard deviation, ``m2`` relative."""
    count, mean, m2 = (t.to(torch.float64) for t in got)
    n, mu, s = ref
    sd = torch.sqrt(s / n)
    errs = ((count - n).abs().max(), ((mean - mu).abs() / sd).max(),
            ((m2 - s).abs() / s).max())
    worst = max(float(e) for e in errs)
    return worst if worst == worst else float("inf")  # NaN counts as wrong


def check_merge_moments(fn: Callable, tol: float = 1e-9) -> CheckResult:
    r"""Grade a reader's ``fn(n_a, mean_a, m2_a, n_b, mean_b, m2_b) -> (n, mean, m2)``, the
    per-channel merge of two sets' statistics (each argument a float64 ``(C,)`` tensor):

    .. math::

        n &= n_a + n_b, \qquad \delta = \bar{x}_b - \bar{x}_a, \\
        \bar{x} &= \bar{x}_a + \delta \frac{n_b}{n}, \\
        M_2 &= M_{2,a} + M_{2,b} + \delta^2 \frac{n_a n_b}{n}.

    The merged statistics must equal those of the pooled values, computed by torch, within
    ``tol`` (mean in units of the standard deviation, :math:`M_2` relative) on four pairs
    of random sets (unequal sizes, a set of one value, a mean of :math:`10^5` with a spread
    of 1, where a route through sums of squares loses its digits), and, folded left to
    right over the 252 label-sorted batches of :func:`label_sorted_batches`, give the
    statistics of all training rows, the ones :func:`bnlib.torch.recompute_bn_stats` gives
    the BN layer.

    Args:
        fn: the reader's function.
        tol: largest allowed error. Default: ``1e-9``.

    Returns:
        A :class:`~bnlib.audit.CheckResult` whose ``value`` is the largest error.

    Example:
        >>> from bnlib.torch._stats import merge_moments
        >>> check_merge_moments(merge_moments).passed
        True
    """
    worst = 0.0
    cases = list(_random_cases())
    for name, a, b in cases:
        try:
            got = fn(*_moments(a), *_moments(b))
        except Exception as exc:  # the reader's code: report it, do not crash
            return CheckResult("merge_moments", False,
                               f"raised {type(exc).__name__} ({name}): "
                               f"{str(exc).splitlines()[0][:60]}")
        if len(got) != 3 or any(tuple(t.shape) != (5,) for t in got):
            return CheckResult("merge_moments", False,
                               "expected (n, mean, m2), each of shape (C,)")
        worst = max(worst, _error(got, _moments(torch.cat([a, b]))))
        if worst > tol:
            hint = ("; merge the deviations (delta), not sums of squares"
                    if name.startswith("mean 1e5") else "")
            return CheckResult("merge_moments", False,
                               f"differs from the pooled statistics ({name}): "
                               f"error {worst:.1e}{hint}", worst)
    model, batches = label_sorted_batches()
    with torch.no_grad():
        acts = [model[0](x) for x in batches]
    merged = _moments(acts[0])
    try:
        for h in acts[1:]:
            merged = fn(*merged, *_moments(h))
    except Exception as exc:
        return CheckResult("merge_moments", False,
                           f"raised {type(exc).__name__} (digits): "
                           f"{str(exc).splitlines()[0][:60]}")
    pooled = _moments(torch.cat(acts))
    worst = max(worst, _error(merged, pooled))
    bt.recompute_bn_stats(model, batches)
    bn = model[1]
    precise = (pooled[0], bn.running_mean, bn.running_var * (pooled[0] - 1))
    worst = max(worst, _error(merged, precise))
    if worst > tol:
        return CheckResult("merge_moments", False,
                           f"differs from the pooled statistics of {len(batches)} "
                           f"label-sorted digit batches: error {worst:.1e}", worst)
    return CheckResult("merge_moments", True,
                       f"matches the pooled statistics: {len(cases)} pairs, "
                       f"{len(batches)} digit batches (error < {tol:.0e})", worst)
