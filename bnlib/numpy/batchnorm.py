"""Batch normalization as pure NumPy functions: a forward pass and two backward passes.

The forward pass follows Ioffe & Szegedy (2015), Algorithm 1, for a mini-batch
``x`` of shape ``(N, C)`` or ``(N, C, *spatial)``. Statistics are taken per
channel ``c`` over every other axis, so each channel sees ``m = N * prod(spatial)``
values:

.. math::

    \\mu_c = \\frac{1}{m} \\sum_i x_{ic}, \\qquad
    \\sigma_c^2 = \\frac{1}{m} \\sum_i (x_{ic} - \\mu_c)^2,

    \\hat{x}_{ic} = \\frac{x_{ic} - \\mu_c}{\\sqrt{\\sigma_c^2 + \\epsilon}}, \\qquad
    y_{ic} = \\gamma_c \\hat{x}_{ic} + \\beta_c .

Two backward passes are given: :func:`batch_norm_backward_staged` walks the
computational graph one node at a time (the derivation of chapter 3), and
:func:`batch_norm_backward` is the compact closed form

.. math::

    \\frac{\\partial L}{\\partial x_{ic}} = \\frac{\\gamma_c}{m \\sqrt{\\sigma_c^2 + \\epsilon}}
    \\Big( m\\, g_{ic} - \\sum_j g_{jc} - \\hat{x}_{ic} \\sum_j g_{jc} \\hat{x}_{jc} \\Big),
    \\qquad g = \\frac{\\partial L}{\\partial y}.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BatchNormCache",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_backward_staged",
    "check_input",
    "reduce_axes",
    "channel_shape",
]


def reduce_axes(ndim: int) -> tuple[int, ...]:
    """The axes a per-channel statistic reduces over: all but axis 1.

    Example:
        >>> reduce_axes(4)
        (0, 2, 3)
    """
    return (0,) + tuple(range(2, ndim))


def channel_shape(ndim: int, num_channels: int) -> tuple[int, ...]:
    """The shape ``(1, C, 1, ...)`` that broadcasts a per-channel vector against the input."""
    return (1, num_channels) + (1,) * (ndim - 2)


def check_input(x, num_features: int | None = None, training: bool = True) -> np.ndarray:
    """Validate a batch-norm input once, at the public entry point, and return it as an array.

    Raises ``ValueError`` (in PyTorch's words where PyTorch has words) for: fewer than two
    dimensions, a non-floating dtype, a channel count that differs from ``num_features``,
    an empty tensor, and, in training, a single value per channel (whose variance is 0 and
    whose normalized value is meaningless).
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            f"expected 2D or higher input of shape (N, C, ...) (got {x.ndim}D input)"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"expected a floating-point input (got dtype {x.dtype}); convert it first, "
            "e.g. x.astype(np.float32)"
        )
    if num_features is not None and x.shape[1] != num_features:
        raise ValueError(
            f"expected input with {num_features} channels in axis 1 (got {x.shape[1]} channels "
            f"in input of shape {x.shape})"
        )
    if x.size == 0:
        raise ValueError(f"expected a non-empty input (got input of shape {x.shape})")
    values_per_channel = x.size // x.shape[1]
    if training and values_per_channel == 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, "
            f"got input size {x.shape}"
        )
    return x


@dataclass
class BatchNormCache:
    """What the forward pass keeps for the backward pass.

    Attributes:
        mean: batch mean, shape ``(C,)``.
        x_centered: ``x - mu``, same shape as ``x``.
        x_hat: the normalized input, same shape as ``x``.
        var: biased batch variance, shape ``(C,)``.
        inv_std: ``1 / sqrt(var + eps)``, shape ``(C,)``.
        gamma: the scale used, shape ``(C,)``, or ``None`` (no affine transform).
        eps: the epsilon used.
    """

    mean: np.ndarray
    x_centered: np.ndarray
    x_hat: np.ndarray
    var: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray | None
    eps: float

    @property
    def axes(self) -> tuple[int, ...]:
        return reduce_axes(self.x_hat.ndim)

    @property
    def count(self) -> int:
        """``m``: the number of values each channel's statistics are taken over."""
        return self.x_hat.size // self.x_hat.shape[1]

    def per_channel(self, v: np.ndarray) -> np.ndarray:
        """Reshape a ``(C,)`` vector to broadcast against the input."""
        return v.reshape(channel_shape(self.x_hat.ndim, self.x_hat.shape[1]))


def batch_norm_forward(x, gamma, beta, eps: float = 1e-5):
    """Batch-normalize ``x`` with its own batch statistics (training mode).

    The variance is the biased one (divide by ``m``) and is computed in two
    passes, ``mean((x - mu)**2)``, which stays accurate when ``|mu|`` is large
    compared with the spread; the one-pass ``E[x^2] - E[x]^2`` can even come
    out negative there. Both means are accumulated in float64, and ``x - mu``
    is rounded to ``x``'s dtype only after the subtraction, so float32 input
    keeps float32 accuracy at any ``|mu| / sigma``.

    Args:
        x: input, shape ``(N, C)`` or ``(N, C, *spatial)``, floating point.
        gamma: scale, shape ``(C,)``, or ``None`` for no scale (1).
        beta: shift, shape ``(C,)``, or ``None`` for no shift (0).
        eps: added to the variance before the square root. Default: ``1e-5``.

    Returns:
        ``(y, cache)``: the output, same shape and dtype as ``x``, and a
        :class:`BatchNormCache` for :func:`batch_norm_backward`.

    Example:
        >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
        >>> y, _ = batch_norm_forward(x, np.ones(2), np.zeros(2), eps=0.0)
        >>> y
        array([[-1., -1.],
               [ 1.,  1.]])
    """
    num = None if gamma is None else np.shape(gamma)[0]
    x = check_input(x, num, training=True)
    axes = reduce_axes(x.ndim)
    num_channels = x.shape[1]
    shape = channel_shape(x.ndim, num_channels)
    # Sums accumulate in float64: a float32 running sum of m values loses
    # about log2(m) bits, and all of them when |mu| >> sigma (1e4 + N(0, 1)).
    mu = x.mean(axis=axes, dtype=np.float64)  # (C,)
    # (N, C, *spatial), rounded once
    x_centered = (x - mu.reshape(shape)).astype(x.dtype)
    var = np.mean(x_centered * x_centered, axis=axes, dtype=np.float64)
    var = var.astype(x.dtype)  # (C,)
    mu = mu.astype(x.dtype)
    inv_std = 1.0 / np.sqrt(var + eps)  # (C,)
    x_hat = x_centered * inv_std.reshape(shape)
    y = x_hat
    if gamma is not None:
        gamma = np.asarray(gamma, dtype=x.dtype)
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + np.asarray(beta, dtype=x.dtype).reshape(shape)
    cache = BatchNormCache(mu, x_centered, x_hat, var, inv_std, gamma, eps)
    return y, cache


def batch_norm_backward(dy, cache: BatchNormCache):
    """Gradients of batch normalization, compact closed form.

    Args:
        dy: upstream gradient ``dL/dy``, same shape as the forward input.
        cache: the :class:`BatchNormCache` that :func:`batch_norm_forward`
            returned.

    Returns:
        ``(dx, dgamma, dbeta)``: ``dx`` has the shape of ``x``; ``dgamma`` and
        ``dbeta`` have shape ``(C,)`` (``dgamma`` is computed even when
        ``gamma`` was ``None``).
    """
    dy = np.asarray(dy)
    axes, m, x_hat = cache.axes, cache.count, cache.x_hat
    dbeta = dy.sum(axis=axes)  # (C,)
    dgamma = np.sum(dy * x_hat, axis=axes)  # (C,)
    scale = cache.inv_std  # (C,)
    if cache.gamma is not None:
        scale = cache.gamma * cache.inv_std
    # g = dL/dx_hat = gamma * dy, so sum(g) = gamma * dbeta
    # and sum(g * x_hat) = gamma * dgamma
    dx = cache.per_channel(scale / m) * (
        m * dy - cache.per_channel(dbeta) - x_hat * cache.per_channel(dgamma)
    )
    return dx, dgamma, dbeta


def batch_norm_backward_staged(dy, cache: BatchNormCache):
    """Gradients of batch normalization, walking the graph node by node.

    The forward graph, per channel, is::

        mu = mean(x);  xc = x - mu;  var = mean(xc**2)
        std = sqrt(var + eps);  inv_std = 1 / std
        x_hat = xc * inv_std;  y = gamma * x_hat + beta

    and each line below is the chain rule through one of those nodes, in
    reverse.
    Same arguments and results as :func:`batch_norm_backward`.
    """
    dy = np.asarray(dy)
    axes, m, pc = cache.axes, cache.count, cache.per_channel
    xc, x_hat = cache.x_centered, cache.x_hat
    gamma = np.ones_like(cache.var) if cache.gamma is None else cache.gamma
    std = np.sqrt(cache.var + cache.eps)  # (C,)

    dbeta = dy.sum(axis=axes)  # y = ... + beta
    dgamma = np.sum(dy * x_hat, axis=axes)  # y = gamma * x_hat + ...
    dx_hat = dy * pc(gamma)  # y = gamma * x_hat
    dinv_std = np.sum(dx_hat * xc, axis=axes)  # x_hat = xc * inv_std  (C,)
    dxc = dx_hat * pc(cache.inv_std)  #          ... the xc branch
    dstd = -dinv_std / std**2  # inv_std = 1 / std
    dvar = dstd / (2.0 * std)  # std = sqrt(var + eps)
    dxc = dxc + pc(dvar) * 2.0 * xc / m  # var = mean(xc**2): 2nd path to xc
    dmu = -dxc.sum(axis=axes)  # xc = x - mu             (C,)
    dx = dxc + pc(dmu) / m  # mu = mean(x)
    return dx, dgamma, dbeta
