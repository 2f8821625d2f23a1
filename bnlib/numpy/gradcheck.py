"""Numerical gradients by central differences, to check hand-derived backward passes."""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["numerical_gradient", "relative_error"]


def numerical_gradient(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, dy: np.ndarray,
                       h: float = 1e-6) -> np.ndarray:
    """The gradient of ``L(x) = sum(f(x) * dy)`` with respect to ``x``, by central differences.

    .. math::

        \\frac{\\partial L}{\\partial x_k} \\approx \\frac{L(x + h e_k) - L(x - h e_k)}{2h}

    The error is ``O(h^2)`` from truncation plus ``O(u / h)`` from rounding (``u`` the unit
    roundoff), so use float64 inputs; ``h = 1e-6`` balances the two for well-scaled data.

    Args:
        f: a function of one array returning an array of the shape of ``dy``.
        x: the point, float64; it is perturbed in place and restored.
        dy: the upstream gradient ``dL/df``.
        h: the step. Default: ``1e-6``.

    Returns:
        An array of the shape of ``x``.

    Example:
        >>> x = np.array([1.0, 2.0])
        >>> numerical_gradient(lambda v: v**2, x, np.ones(2)).round(6)
        array([2., 4.])
    """
    if x.dtype != np.float64:
        raise ValueError(f"expected a float64 array (got {x.dtype}); finite differences "
                         "in lower precision are dominated by rounding error")
    grad = np.zeros_like(x)
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)  # views
    for k in range(flat_x.size):
        saved = flat_x[k]
        flat_x[k] = saved + h
        plus = np.sum(f(x) * dy)
        flat_x[k] = saved - h
        minus = np.sum(f(x) * dy)
        flat_x[k] = saved
        flat_grad[k] = (plus - minus) / (2.0 * h)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray, floor: float = 1e-12) -> float:
    """``max |a - b| / max(|a| + |b|)``: a scale-free distance between two arrays."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a) + np.abs(b)), floor))
