"""The grader of chapter 7's exercise: the reader writes Batch Renormalization's ``r`` and
``d`` (Ioffe 2017), and :func:`check_renorm_correction` compares them with
:func:`bnlib.torch.renorm_correction` and with the defining property of Batch Renorm (the
CS231n pattern: a provided checker prints a verdict)."""
from __future__ import annotations

from typing import Callable

import torch

import bnlib.torch as bt

from ..audit import CheckResult

__all__ = ["check_renorm_correction"]


def _cases():
    """Seeded float64 cases: unclipped, clipped in ``r`` both ways, clipped in ``d``."""
    g = torch.Generator().manual_seed(0)
    for r_max, d_max, spread in ((100.0, 100.0, 1.0), (3.0, 5.0, 1.0), (1.5, 0.5, 4.0),
                                 (1.0, 0.0, 1.0)):
        batch_mean = torch.randn(6, generator=g, dtype=torch.float64) * spread
        batch_std = torch.rand(6, generator=g, dtype=torch.float64) * 3 * spread + 0.1
        running_mean = torch.randn(6, generator=g, dtype=torch.float64)
        running_var = torch.rand(6, generator=g, dtype=torch.float64) * 2 + 0.2
        yield batch_mean, batch_std, running_mean, running_var, 1e-5, r_max, d_max


def check_renorm_correction(fn: Callable, tol: float = 1e-12) -> CheckResult:
    r"""Grade a reader's ``fn(batch_mean, batch_std, running_mean, running_var, eps, r_max,
    d_max) -> (r, d)``:

    .. math::
        \sigma = \sqrt{\sigma^2_{\text{running}} + \epsilon},

        r = \operatorname{clip}_{[1/r_{\max},\, r_{\max}]}\Big(\frac{\sigma_B}{\sigma}\Big),

        d = \operatorname{clip}_{[-d_{\max},\, d_{\max}]}\Big(\frac{\mu_B - \mu}{\sigma}\Big).

    Both must equal :func:`bnlib.torch.renorm_correction` within ``tol`` (float64) on cases
    with and without clipping, carry no gradient, and, where nothing is clipped, turn the
    batch-normalized value into the one normalized with the running statistics.

    Args:
        fn: the reader's function.
        tol: largest allowed absolute difference. Default: ``1e-12``.

    Returns:
        A :class:`~bnlib.audit.CheckResult` whose ``value`` is the largest difference.

    Example:
        >>> check_renorm_correction(bt.renorm_correction).passed
        True
    """
    worst = 0.0
    for case in _cases():
        mb, sb, rm, rv, eps, r_max, d_max = case
        mb_in = mb.clone().requires_grad_()  # gradients must not flow into r and d
        try:
            r, d = fn(mb_in, sb, rm, rv, eps, r_max, d_max)
        except Exception as exc:  # the reader's code: report it, do not crash
            return CheckResult("renorm_correction", False,
                               f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
        r_ref, d_ref = bt.renorm_correction(mb, sb, rm, rv, eps, r_max, d_max)
        if r.shape != r_ref.shape or d.shape != d_ref.shape:
            return CheckResult("renorm_correction", False,
                               f"expected r and d of shape {tuple(r_ref.shape)} "
                               f"(got {tuple(r.shape)} and {tuple(d.shape)})")
        if r.requires_grad or d.requires_grad:
            return CheckResult("renorm_correction", False,
                               "r or d carries a gradient: compute them under torch.no_grad() "
                               "or .detach() them (they are constants for backpropagation)")
        worst = max(worst, float((r - r_ref).abs().max()), float((d - d_ref).abs().max()))
        if r_max == 100.0:  # nothing clipped: (x - mu_B) / sigma_B * r + d = (x - mu) / sigma
            x = torch.linspace(-3, 3, 5, dtype=torch.float64)[:, None]
            sigma = torch.sqrt(rv + eps)
            gap = ((x - mb) / sb * r + d - (x - rm) / sigma).abs().max()
            worst = max(worst, float(gap))
    passed = worst <= tol
    verdict = "matches" if passed else "differs from"
    return CheckResult("renorm_correction", passed,
                       f"{verdict} bnlib.torch.renorm_correction on 4 cases "
                       f"(clipped and unclipped): max difference "
                       f"{'below 1e-12' if worst < 1e-12 else f'{worst:.1e}'}", worst)
