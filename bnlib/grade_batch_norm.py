"""Graders for the exercises of chapters 2 and 3 (the CS231n pattern: the reader writes a
function, a provided checker compares it with references nobody here wrote and prints a
verdict).

- :func:`check_forward` grades a reader's training-mode forward pass against
  ``torch.nn.functional.batch_norm`` (chapter 2);
- :func:`check_backward` grades a reader's input gradient against torch autograd,
  :func:`bnlib.numpy.batch_norm_backward` and central finite differences (chapter 3).

Each returns a :class:`bnlib.audit.CheckResult` whose ``evidence`` says what was compared.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .audit import CheckResult

__all__ = ["check_backward", "check_forward"]

# (N, C) and (N, C, H, W) inputs, a batch of two included (the smallest BN accepts).
_SHAPES = ((8, 3), (2, 4), (4, 3, 2, 2))
# For gradients, no batch of two: its input gradient is zero (the outputs are +-1 whatever
# the input), so a relative error would compare rounding noise.
_GRAD_SHAPES = ((8, 3), (5, 4), (4, 3, 2, 2))


def _case(shape: tuple[int, ...], seed: int):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.normal(2.0, 3.0, size=shape)
    return x, rng.normal(size=c), rng.normal(size=c), rng.normal(size=shape)


def _verdict(name: str, worst: float, tol: float, where: str, what: str,
             shapes=_SHAPES) -> CheckResult:
    passed = bool(np.isfinite(worst) and worst < tol)
    shown = f"< {tol:.0e}" if passed else f"{worst:.1e}"
    evidence = (f"{'PASSED' if passed else 'FAILED'}: largest {what} {shown} "
                f"(tolerance {tol:.0e}) over shapes {', '.join(map(str, shapes))}"
                + ("" if passed else f"; worst at {where}"))
    return CheckResult(name, passed, evidence, float(worst))


def check_forward(fn: Callable, tol: float = 1e-10) -> CheckResult:
    """Grade ``fn(x, gamma, beta, eps) -> y``, batch norm in training mode in NumPy.

    ``x`` is ``(N, C)`` or ``(N, C, H, W)`` float64; ``y`` must equal
    ``torch.nn.functional.batch_norm(..., training=True)`` within ``tol`` (absolute,
    on outputs of order 1).

    Example:
        >>> from bnlib.numpy import batch_norm_forward
        >>> mine = lambda x, g, b, eps: batch_norm_forward(x, g, b, eps)[0]
        >>> check_forward(mine).passed
        True
    """
    worst, where = 0.0, ""
    for seed, shape in enumerate(_SHAPES):
        x, gamma, beta, _ = _case(shape, seed)
        ref = F.batch_norm(torch.tensor(x), None, None, torch.tensor(gamma),
                           torch.tensor(beta), training=True, eps=1e-5).numpy()
        out = np.asarray(fn(x.copy(), gamma.copy(), beta.copy(), 1e-5), dtype=np.float64)
        if out.shape != ref.shape:
            return CheckResult("forward", False, f"FAILED: expected output of shape "
                               f"{ref.shape} (got {out.shape}) for input {shape}",
                               float("inf"))
        err = float(np.max(np.abs(out - ref)))
        if not err <= worst:
            worst, where = err, f"shape {shape}"
    return _verdict("forward", worst, tol, where, "|yours - torch|")


def check_backward(fn: Callable, tol: float = 1e-8) -> CheckResult:
    """Grade ``fn(dy, x_hat, gamma, inv_std) -> dx``, the input gradient of batch norm in
    training mode (chapter 3's compact form), in NumPy.

    ``x_hat`` is the normalized input (shape of ``x``), ``gamma`` and ``inv_std``
    (:math:`1/\\sqrt{\\sigma^2+\\epsilon}`) are ``(C,)``. The result must agree, as a
    relative error (:func:`bnlib.numpy.relative_error`) below ``tol``, with torch autograd
    through ``torch.nn.functional.batch_norm``, with
    :func:`bnlib.numpy.batch_norm_backward` and with central finite differences
    (:func:`bnlib.numpy.numerical_gradient`, step 1e-6: about 1e-9 of its own error).

    Example:
        >>> from bnlib.numpy import batch_norm_backward, BatchNormCache
        >>> def dx(dy, x_hat, gamma, inv_std):
        ...     axes = (0,) + tuple(range(2, dy.ndim))
        ...     shape = (1, -1) + (1,) * (dy.ndim - 2)
        ...     m = dy.size // dy.shape[1]
        ...     g = dy * gamma.reshape(shape)
        ...     return inv_std.reshape(shape) / m * (
        ...         m * g - g.sum(axis=axes).reshape(shape)
        ...         - x_hat * (g * x_hat).sum(axis=axes).reshape(shape))
        >>> check_backward(dx).passed
        True
    """
    from .numpy import batch_norm_backward, batch_norm_forward, numerical_gradient
    from .numpy import relative_error

    worst, where = 0.0, ""
    for seed, shape in enumerate(_GRAD_SHAPES):
        x, gamma, beta, dy = _case(shape, seed)
        _, cache = batch_norm_forward(x, gamma, beta)
        out = np.asarray(fn(dy.copy(), cache.x_hat.copy(), gamma.copy(),
                            cache.inv_std.copy()), dtype=np.float64)
        if out.shape != x.shape:
            return CheckResult("backward", False, f"FAILED: expected dx of shape {x.shape} "
                               f"(got {out.shape})", float("inf"))
        xt = torch.tensor(x, requires_grad=True)
        F.batch_norm(xt, None, None, torch.tensor(gamma), torch.tensor(beta),
                     training=True).backward(torch.tensor(dy))
        refs = {"torch autograd": xt.grad.numpy(),
                "bnlib.numpy.batch_norm_backward": batch_norm_backward(dy, cache)[0],
                "finite differences": numerical_gradient(
                    lambda v: batch_norm_forward(v, gamma, beta)[0], x.copy(), dy)}
        for name, ref in refs.items():
            err = float(relative_error(out, ref))
            if not err <= worst:
                worst, where = err, f"shape {shape} against {name}"
    return _verdict("backward", worst, tol, where,
                    "relative error against autograd, bnlib and finite differences",
                    _GRAD_SHAPES)
