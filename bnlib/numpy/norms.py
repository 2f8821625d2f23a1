"""Layer normalization and group normalization as pure NumPy forward/backward pairs.

Both normalize *rows*: layer norm each sample over its trailing ``normalized_shape``, group
norm each (sample, group of channels) over the group's channels and positions. For a row of
``M`` values with ``x_hat = (x - mu) / sqrt(var + eps)`` and ``g = dL/dx_hat``, the input
gradient has the same closed form as batch norm's, taken along the row instead of the batch:

.. math::

    \\frac{\\partial L}{\\partial x_k} = \\frac{1}{M \\sqrt{\\sigma^2 + \\epsilon}}
    \\Big( M g_k - \\sum_j g_j - \\hat{x}_k \\sum_j g_j \\hat{x}_j \\Big).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["NormCache", "group_norm_backward", "group_norm_forward", "layer_norm_backward",
           "layer_norm_forward"]


@dataclass
class NormCache:
    """What the forward pass keeps for the backward pass.

    Attributes:
        x_hat: the normalized input, the shape of ``x``.
        inv_std: ``1 / sqrt(var + eps)`` per row, shape ``(R, 1)``.
        gamma: the scale used, or ``None``.
        num_groups: ``G`` for group norm, ``None`` for layer norm.
        normalized_ndim: for layer norm, the number of trailing axes normalized over.
    """

    x_hat: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray | None
    num_groups: int | None = None
    normalized_ndim: int = 0


def _normalize_rows(rows: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``(R, M) -> (x_hat (R, M), inv_std (R, 1))`` with each row's mean and biased variance."""
    mean = rows.mean(axis=1, keepdims=True)  # (R, 1)
    var = ((rows - mean) ** 2).mean(axis=1, keepdims=True)  # (R, 1)
    inv_std = 1.0 / np.sqrt(var + eps)
    return (rows - mean) * inv_std, inv_std


def _rows_backward(dx_hat: np.ndarray, x_hat: np.ndarray, inv_std: np.ndarray) -> np.ndarray:
    """The closed-form input gradient of row normalization; all arrays ``(R, M)``/``(R, 1)``."""
    m = x_hat.shape[1]
    return inv_std / m * (m * dx_hat - dx_hat.sum(axis=1, keepdims=True)
                          - x_hat * (dx_hat * x_hat).sum(axis=1, keepdims=True))


def layer_norm_forward(x: np.ndarray, gamma: np.ndarray | None = None,
                       beta: np.ndarray | None = None, normalized_ndim: int = 1,
                       eps: float = 1e-5) -> tuple[np.ndarray, NormCache]:
    """Layer normalization of each sample over its last ``normalized_ndim`` axes.

    .. math::

        y = \\gamma \\odot \\frac{x - \\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}}
            + \\beta

    Args:
        x: ``(*, *normalized_shape)``.
        gamma, beta: ``normalized_shape`` arrays or ``None``.
        normalized_ndim: how many trailing axes form ``normalized_shape``. Default: ``1``.
        eps: added to the variance. Default: ``1e-5``.

    Returns:
        ``y`` (the shape of ``x``) and the cache for :func:`layer_norm_backward`.

    Example:
        >>> y, _ = layer_norm_forward(np.array([[1.0, 3.0]]), eps=0.0)
        >>> y
        array([[-1.,  1.]])
    """
    x = np.asarray(x)
    if not 1 <= normalized_ndim <= x.ndim:
        raise ValueError(f"expected 1 <= normalized_ndim <= {x.ndim} for a {x.ndim}D input "
                         f"(got {normalized_ndim})")
    normalized_shape = x.shape[x.ndim - normalized_ndim:]
    for name, p in (("gamma", gamma), ("beta", beta)):
        if p is not None and np.shape(p) != normalized_shape:
            raise ValueError(f"Given normalized_shape={list(normalized_shape)}, expected "
                             f"{name} of that shape (got {list(np.shape(p))})")
    rows = x.reshape(-1, int(np.prod(normalized_shape)))  # (R, M)
    x_hat, inv_std = _normalize_rows(rows, eps)
    x_hat = x_hat.reshape(x.shape)
    y = x_hat if gamma is None else x_hat * gamma
    y = y if beta is None else y + beta
    return y, NormCache(x_hat, inv_std, gamma, normalized_ndim=normalized_ndim)


def layer_norm_backward(dy: np.ndarray, cache: NormCache
                        ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Gradients of layer norm: ``dx``, ``dgamma`` and ``dbeta`` (``None`` without affine).

    Example:
        >>> y, cache = layer_norm_forward(np.array([[1.0, 2.0, 4.0]]))
        >>> dx, dgamma, dbeta = layer_norm_backward(np.ones_like(y), cache)
        >>> # an equal push on every output moves no input:
        >>> bool(np.abs(dx).max() < 1e-12)
        True
    """
    x_hat, k = cache.x_hat, cache.normalized_ndim
    batch_axes = tuple(range(x_hat.ndim - k))
    dx_hat = dy if cache.gamma is None else dy * cache.gamma
    m = int(np.prod(x_hat.shape[x_hat.ndim - k:]))
    dx = _rows_backward(dx_hat.reshape(-1, m), x_hat.reshape(-1, m), cache.inv_std)
    if cache.gamma is None:
        return dx.reshape(x_hat.shape), None, None
    return (dx.reshape(x_hat.shape), (dy * x_hat).sum(axis=batch_axes),
            dy.sum(axis=batch_axes))


def group_norm_forward(x: np.ndarray, num_groups: int, gamma: np.ndarray | None = None,
                       beta: np.ndarray | None = None, eps: float = 1e-5
                       ) -> tuple[np.ndarray, NormCache]:
    """Group normalization: each sample's ``C`` channels in ``num_groups`` groups of
    consecutive channels, each group normalized over its channels and positions, then a
    per-channel scale and shift.

    .. math::

        y_{n,c} = \\gamma_c \\frac{x_{n,c} - \\mu_{n,g(c)}}{\\sqrt{\\sigma^2_{n,g(c)} +
        \\epsilon}} + \\beta_c

    Args:
        x: ``(N, C, *spatial)``.
        num_groups: ``G``; must divide ``C``.
        gamma, beta: ``(C,)`` or ``None``.
        eps: added to the variance. Default: ``1e-5``.

    Returns:
        ``y`` (the shape of ``x``) and the cache for :func:`group_norm_backward`.

    Example:
        >>> y, _ = group_norm_forward(np.array([[1.0, 3.0, 0.0, 4.0]]), 2, eps=0.0)
        >>> y
        array([[-1.,  1., -1.,  1.]])
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"expected 2D or higher input of shape (N, C, ...) (got {x.ndim}D "
                         "input)")
    n, c = x.shape[:2]
    if num_groups < 1 or c % num_groups != 0:
        raise ValueError(f"num_channels ({c}) must be divisible by num_groups ({num_groups})")
    for name, p in (("gamma", gamma), ("beta", beta)):
        if p is not None and np.shape(p) != (c,):
            raise ValueError(f"expected {name} of shape ({c},) for input with {c} channels "
                             f"(got {np.shape(p)})")
    x_hat, inv_std = _normalize_rows(x.reshape(n * num_groups, -1), eps)  # (N*G, C/G*S)
    x_hat = x_hat.reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    y = x_hat if gamma is None else x_hat * gamma.reshape(shape)
    y = y if beta is None else y + beta.reshape(shape)
    return y, NormCache(x_hat, inv_std, gamma, num_groups=num_groups)


def group_norm_backward(dy: np.ndarray, cache: NormCache
                        ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Gradients of group norm: ``dx``, ``dgamma`` and ``dbeta`` (``None`` without affine).

    Example:
        >>> x = np.arange(8.0).reshape(1, 4, 2)
        >>> y, cache = group_norm_forward(x, 2, gamma=np.ones(4), beta=np.zeros(4))
        >>> dx, dgamma, dbeta = group_norm_backward(np.ones_like(y), cache)
        >>> dbeta
        array([2., 2., 2., 2.])
    """
    x_hat = cache.x_hat
    n, c = x_hat.shape[:2]
    shape = (1, c) + (1,) * (x_hat.ndim - 2)
    dx_hat = dy if cache.gamma is None else dy * cache.gamma.reshape(shape)
    rows = n * cache.num_groups
    dx = _rows_backward(dx_hat.reshape(rows, -1), x_hat.reshape(rows, -1), cache.inv_std)
    if cache.gamma is None:
        return dx.reshape(x_hat.shape), None, None
    axes = (0,) + tuple(range(2, x_hat.ndim))
    return dx.reshape(x_hat.shape), (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)
