"""A batch-norm layer in NumPy: the functional core plus the state a network keeps."""
from __future__ import annotations

import numpy as np

from .batchnorm import (batch_norm_backward, batch_norm_forward, channel_shape,
                        check_input)

__all__ = ["BatchNorm"]


class BatchNorm:
    """Batch normalization over axis 1 of ``(N, C)`` or ``(N, C, *spatial)`` input.

    Training mode normalizes with the batch's own mean and biased variance and updates the
    running statistics with PyTorch's momentum convention (``momentum`` is the weight of the
    *new* batch; Keras' ``momentum=0.99`` is PyTorch's ``momentum=0.01``):

    .. math::

        \\hat\\mu \\leftarrow (1 - \\text{momentum})\\, \\hat\\mu + \\text{momentum}\\, \\mu_B,

        \\hat\\sigma^2 \\leftarrow (1 - \\text{momentum})\\, \\hat\\sigma^2
            + \\text{momentum}\\, \\frac{m}{m - 1} \\sigma_B^2 .

    Evaluation mode normalizes with the running statistics, so each sample's output
    depends on that sample alone.

    Args:
        num_features: ``C``, the size of axis 1.
        eps: added to the variance. Default: ``1e-5``.
        momentum: weight of the new batch in the running averages, or ``None`` for a
            cumulative (equal-weight) average over all batches seen. Default: ``0.1``.
        affine: learn a per-channel ``weight`` (gamma) and ``bias`` (beta). Default: ``True``.
        track_running_stats: keep running statistics; if ``False`` batch statistics are used
            in evaluation too. Default: ``True``.
        dtype: dtype of parameters and statistics. Default: ``np.float64``.

    Shape:
        Input ``(N, C)`` or ``(N, C, *spatial)``; output the same.

    Example:
        >>> bn = BatchNorm(3)
        >>> y = bn(np.random.default_rng(0).normal(size=(8, 3)))
        >>> bn.num_batches_tracked
        1
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype=np.float64):
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.training = True
        self.weight = np.ones(num_features, dtype) if affine else None
        self.bias = np.zeros(num_features, dtype) if affine else None
        self.grad_weight = self.grad_bias = None
        if track_running_stats:
            self.running_mean = np.zeros(num_features, dtype)
            self.running_var = np.ones(num_features, dtype)
            self.num_batches_tracked = 0
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self._cache = None

    def train(self, mode: bool = True) -> "BatchNorm":
        self.training = mode
        return self

    def eval(self) -> "BatchNorm":
        return self.train(False)

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        use_batch_stats = self.training or not self.track_running_stats
        x = check_input(x, self.num_features, training=use_batch_stats)
        if use_batch_stats:
            y, self._cache = batch_norm_forward(x, self.weight, self.bias, self.eps)
            if self.training and self.track_running_stats:
                self._update_running_stats(self._cache)
            return y
        self._cache = None  # evaluation: no backward through running statistics here
        shape = channel_shape(x.ndim, self.num_features)
        scale = 1.0 / np.sqrt(self.running_var + self.eps)
        shift = -self.running_mean * scale
        if self.affine:
            scale, shift = self.weight * scale, self.weight * shift + self.bias
        return x * scale.reshape(shape).astype(x.dtype) + shift.reshape(shape).astype(x.dtype)

    def _update_running_stats(self, cache) -> None:
        self.num_batches_tracked += 1
        factor = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
        m = cache.count
        unbiased_var = cache.var * (m / (m - 1))  # population estimate: divide by m - 1
        self.running_mean = (1 - factor) * self.running_mean + factor * cache.mean
        self.running_var = (1 - factor) * self.running_var + factor * unbiased_var

    def backward(self, dy):
        """Gradient with respect to the last training-mode input; stores ``grad_weight`` and
        ``grad_bias``."""
        if self._cache is None:
            raise ValueError("backward() needs a preceding forward() that used batch statistics")
        dx, dgamma, dbeta = batch_norm_backward(dy, self._cache)
        if self.affine:
            self.grad_weight, self.grad_bias = dgamma, dbeta
        return dx

    def __repr__(self) -> str:
        return (f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats})")
