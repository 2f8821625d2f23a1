"""The grader of chapter 7b's exercise: the reader writes group normalization (Wu & He 2018)
from tensor operations, and :func:`check_group_norm` compares it with ``torch.nn.GroupNorm``
(the CS231n pattern: a provided checker prints a verdict)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..audit import CheckResult

__all__ = ["check_group_norm"]

#: ``(shape, num_groups, eps)`` of the graded cases: images, sequences and an MLP's
#: features; ``G = 1`` (layer norm), ``G = C`` (instance norm); one sample; a large ``eps``.
CASES: tuple[tuple[tuple[int, ...], int, float], ...] = (
    ((4, 6, 3, 3), 3, 1e-5),
    ((3, 8, 5), 4, 1e-5),
    ((5, 100), 4, 1e-5),
    ((3, 4, 2, 2), 1, 1e-5),
    ((3, 4, 2, 2), 4, 1e-5),
    ((1, 6, 2, 3), 2, 1e-5),
    ((4, 6, 2, 2), 3, 0.5),
)


def _input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Seeded float64 input whose channels have different means and scales, so that a
    wrong grouping of the channels changes the statistics."""
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    view = [1, c] + [1] * (len(shape) - 2)
    mean = torch.linspace(-3.0, 3.0, c, dtype=torch.float64).view(view)
    scale = torch.linspace(0.5, 2.0, c, dtype=torch.float64).flip(0).view(view)
    return mean + scale * torch.randn(shape, generator=g, dtype=torch.float64)


def check_group_norm(fn: Callable, tol: float = 1e-10) -> CheckResult:
    r"""Grade a reader's ``fn(x, num_groups, eps) -> y`` (group norm without affine
    parameters): for ``x`` of shape ``(N, C, *spatial)`` split into ``G = num_groups``
    groups of ``C / G`` consecutive channels,

    .. math::
        y_{n,c,\dots} = \frac{x_{n,c,\dots} - \mu_{n,g}}{\sqrt{\sigma^2_{n,g} + \epsilon}},

    with :math:`\mu_{n,g}` and the biased :math:`\sigma^2_{n,g}` taken over the channels of
    group :math:`g = \lfloor c G / C \rfloor` and all spatial positions of sample
    :math:`n`. It must equal ``torch.nn.GroupNorm(G, C, eps, affine=False)`` within ``tol``
    (float64) on every case of ``CASES``, keep the input's shape and leave the input
    unchanged.

    Args:
        fn: the reader's function.
        tol: largest allowed absolute difference. Default: ``1e-10``.

    Returns:
        A :class:`~bnlib.audit.CheckResult` whose ``value`` is the largest difference.

    Example:
        >>> ref = lambda x, g, eps: nn.functional.group_norm(x, g, eps=eps)
        >>> check_group_norm(ref).passed
        True
    """
    worst = 0.0
    for seed, (shape, groups, eps) in enumerate(CASES):
        x = _input(shape, seed)
        before = x.clone()
        where = f"shape {shape}, G = {groups}"
        try:
            y = fn(x, groups, eps)
        except Exception as exc:  # the reader's code: report it, do not crash
            return CheckResult("group_norm", False,
                               f"raised {type(exc).__name__} on {where}: "
                               f"{str(exc).splitlines()[0][:60]}")
        if not torch.equal(x, before):
            return CheckResult("group_norm", False,
                               f"changed its input in place ({where})")
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            return CheckResult("group_norm", False,
                               f"expected an output of shape {shape} (got {got})")
        ref = nn.GroupNorm(groups, shape[1], eps=eps, affine=False).double()(x)
        diff = float((y.to(torch.float64) - ref).abs().max())
        worst = max(worst, diff if diff == diff else float("inf"))  # NaN counts as wrong
        if worst > tol:
            return CheckResult("group_norm", False,
                               f"differs from nn.GroupNorm on {where}: "
                               f"max difference {worst:.1e}", worst)
    return CheckResult("group_norm", True,
                       f"matches nn.GroupNorm on {len(CASES)} cases, G = 1 and G = C "
                       f"included (error < {tol:.0e})", worst)
