"""Graders for the exercises of chapters 6 and 8 (the CS231n pattern: the reader writes a
function, a provided checker compares it with ``torch.nn`` and prints a verdict).

Each checker returns a :class:`~bnlib.audit.CheckResult`; the chapter prints its
``evidence``. Chapter 5's grader lives with its experiment
(:func:`bnlib.experiments.sequences.check_masked_batch_norm`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_eval

from . import torch as bt
from .audit import CheckResult

__all__ = ["check_eval_affine", "check_fuse_linear_bn"]


def _trained_pair(seed: int, n_in: int, n_out: int) -> tuple[nn.Linear, nn.BatchNorm1d]:
    """A float64 ``Linear -> BatchNorm1d`` pair in evaluation mode with non-trivial running
    statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    linear, norm = nn.Linear(n_in, n_out).double(), nn.BatchNorm1d(n_out).double()
    with torch.no_grad():
        for _ in range(10):  # training-mode passes give the running statistics values
            norm(linear(3.0 * torch.randn(32, n_in, generator=g, dtype=torch.float64) + 1.0))
        norm.weight.uniform_(0.5, 2.0, generator=g)
        norm.bias.uniform_(-1.0, 1.0, generator=g)
    return linear.eval(), norm.eval()


def check_fuse_linear_bn(fn: Callable[[nn.Linear, nn.BatchNorm1d], nn.Linear],
                         tol: float = 1e-10) -> CheckResult:
    r"""Grade a reader's ``fn(linear, bn) -> nn.Linear`` that folds an evaluation-mode
    ``BatchNorm1d`` into the ``Linear`` layer before it,

    .. math::

        W' = \operatorname{diag}\!\Big(\frac{\gamma}{\sqrt{\hat\sigma^2 + \epsilon}}\Big) W,
        \qquad
        b' = (b - \hat\mu)\,\frac{\gamma}{\sqrt{\hat\sigma^2 + \epsilon}} + \beta .

    The fused layer must give the outputs of ``bn(linear(x))`` and of
    ``torch.nn.utils.fusion.fuse_linear_bn_eval`` within ``tol`` (float64), for pairs
    with several shapes, and must leave the two input modules unchanged.

    Args:
        fn: the reader's fusion.
        tol: largest allowed absolute difference. Default: ``1e-10``.

    Returns:
        A :class:`~bnlib.audit.CheckResult` whose ``value`` is the largest difference.

    Example:
        >>> check_fuse_linear_bn(fuse_linear_bn_eval).passed
        True
    """
    worst = 0.0
    for seed, (n_in, n_out) in enumerate([(5, 3), (4, 4), (2, 7)]):
        linear, norm = _trained_pair(seed, n_in, n_out)
        before = [t.clone() for t in (linear.weight, linear.bias, norm.running_mean,
                                      norm.running_var, norm.weight, norm.bias)]
        try:
            fused = fn(linear, norm)
        except Exception as exc:  # the reader's code: report, do not crash the checker
            return CheckResult("fuse_linear_bn", False,
                               f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
        if not isinstance(fused, nn.Linear):
            return CheckResult("fuse_linear_bn", False,
                               f"expected an nn.Linear (got {type(fused).__name__})")
        after = (linear.weight, linear.bias, norm.running_mean, norm.running_var,
                 norm.weight, norm.bias)
        if any(not torch.equal(a, b) for a, b in zip(before, after)):
            return CheckResult("fuse_linear_bn", False,
                               "changed the input modules; build a new layer instead")
        x = torch.randn(8, n_in, generator=torch.Generator().manual_seed(99 + seed),
                        dtype=torch.float64)
        with torch.no_grad():
            out = fused(x)
            for ref in (norm(linear(x)), fuse_linear_bn_eval(linear, norm)(x)):
                worst = max(worst, float((out - ref).abs().max()))
    passed = worst <= tol
    evidence = (f"matches BN(linear(x)) and fuse_linear_bn_eval (largest difference "
                f"below {tol:.0e})" if passed else
                f"differs from BN(linear(x)) by up to {worst:.1e}")
    return CheckResult("fuse_linear_bn", passed, evidence, worst)


def _trained_bn(cls: type, seed: int, affine: bool, momentum: float | None) -> nn.Module:
    """A float64 ``BatchNorm1d(4)`` of class ``cls`` in evaluation mode, with running
    statistics from five training-mode passes and, if ``affine``, non-trivial parameters."""
    g = torch.Generator().manual_seed(seed)
    bn = cls(4, affine=affine, momentum=momentum).double()
    with torch.no_grad():
        for _ in range(5):
            bn(3.0 + 2.0 * torch.randn(16, 4, generator=g, dtype=torch.float64))
        if affine:
            bn.weight.uniform_(0.5, 2.0, generator=g)
            bn.bias.uniform_(-1.0, 1.0, generator=g)
    return bn.eval()


def check_eval_affine(fn: Callable[[nn.Module], tuple[torch.Tensor, torch.Tensor]],
                      tol: float = 1e-12) -> CheckResult:
    r"""Grade a reader's ``fn(bn) -> (scale, shift)``: the per-channel affine map an
    evaluation-mode batch-norm layer applies,

    .. math::

        y = a x + b, \qquad a = \frac{\gamma}{\sqrt{\hat\sigma^2 + \epsilon}}, \qquad
        b = \beta - \hat\mu\, a

    (:math:`\gamma = 1`, :math:`\beta = 0` without affine parameters). ``scale * x +
    shift`` must equal ``bn(x)`` within ``tol`` (float64) for ``bnlib.torch`` and
    ``torch.nn`` layers, with and without affine parameters and with ``momentum=None``,
    and ``fn`` must leave the layer unchanged (still in evaluation mode, same state).

    Args:
        fn: the reader's function.
        tol: largest allowed absolute difference. Default: ``1e-12``.

    Returns:
        A :class:`~bnlib.audit.CheckResult`; its ``evidence`` starts with ``PASSED`` or
        ``FAILED``.

    Example:
        >>> def scale_shift(bn):
        ...     a = 1.0 / torch.sqrt(bn.running_var + bn.eps)
        ...     a = a if bn.weight is None else bn.weight * a
        ...     b = -bn.running_mean * a
        ...     return a, b if bn.bias is None else b + bn.bias
        >>> check_eval_affine(scale_shift).passed
        True
    """
    cases = [(bt.BatchNorm1d, True, 0.1), (nn.BatchNorm1d, True, 0.1),
             (bt.BatchNorm1d, False, None), (nn.BatchNorm1d, False, 0.1)]
    for seed, (cls, affine, momentum) in enumerate(cases):
        bn = _trained_bn(cls, seed, affine, momentum)
        name = f"{cls.__module__.split('.')[0]}, affine={affine}"
        before = {k: v.clone() for k, v in bn.state_dict().items()}
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(99),
                        dtype=torch.float64)
        try:
            with torch.no_grad():
                scale, shift = fn(bn)
                mine = scale * x + shift
        except Exception as exc:  # the reader's code: report, do not crash
            return CheckResult("eval_affine", False,
                               f"FAILED: raised {type(exc).__name__} ({name})")
        after = bn.state_dict()
        if bn.training or any(not torch.equal(v, after[k]) for k, v in before.items()):
            return CheckResult("eval_affine", False, f"FAILED: changed the module ({name})")
        with torch.no_grad():
            ref = bn(x)
        if mine.shape != ref.shape:
            return CheckResult("eval_affine", False,
                               f"FAILED: output shape {tuple(mine.shape)} "
                               f"instead of {tuple(ref.shape)} ({name})")
        worst = float((mine - ref).abs().max())
        if not worst <= tol:
            return CheckResult("eval_affine", False,
                               f"FAILED: differs from bn(x) by more than "
                               f"{tol:.0e} ({name})", worst)
    return CheckResult("eval_affine", True,
                       f"PASSED: equals bn(x) within {tol:.0e} (bnlib.torch and "
                       f"torch.nn, affine or not)")
