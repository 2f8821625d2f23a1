"""Batch Renormalization (Ioffe, 2017): batch norm whose training output is corrected towards
the running statistics, so that training and inference compute nearly the same function."""
from __future__ import annotations

import torch
from torch import Tensor

from ._errors import NormError
from ._stats import batch_stats, momentum_factor
from .autograd import BatchNormFunction
from .batchnorm import BatchNorm1d, BatchNorm2d, _BatchNorm
from .functional import _check, batch_norm

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "batch_renorm", "renorm_correction"]


def renorm_correction(batch_mean: Tensor, batch_std: Tensor, running_mean: Tensor,
                      running_var: Tensor, eps: float = 1e-5, r_max: float = 3.0,
                      d_max: float = 5.0) -> tuple[Tensor, Tensor]:
    """The correction ``(r, d)`` of Batch Renormalization, treated as constants (no gradient).

    .. math::

        \\sigma = \\sqrt{\\sigma^2_{\\text{running}} + \\epsilon},

        r = \\operatorname{clip}_{[1/r_{\\max},\\, r_{\\max}]}\\!\\left(\\frac{\\sigma_B}{\\sigma}\\right),

        d = \\operatorname{clip}_{[-d_{\\max},\\, d_{\\max}]}\\!\\left(
            \\frac{\\mu_B - \\mu}{\\sigma}\\right)

    Args:
        batch_mean, batch_std: ``(C,)``, with ``batch_std = sqrt(batch_var + eps)``.
        running_mean, running_var: ``(C,)``.
        eps: as in batch norm. Default: ``1e-5``.
        r_max: ``>= 1``. Default: ``3.0``.
        d_max: ``>= 0``. Default: ``5.0``.

    Returns:
        ``r`` and ``d``, each ``(C,)``, detached.

    Example:
        >>> r, d = renorm_correction(torch.tensor([1.0]), torch.tensor([4.0]),
        ...                          torch.tensor([0.0]), torch.tensor([1.0]), eps=0.0)
        >>> r, d
        (tensor([3.]), tensor([1.]))
    """
    with torch.no_grad():
        std = torch.sqrt(running_var + eps)
        r = (batch_std / std).clamp(1.0 / r_max, r_max)
        d = ((batch_mean - running_mean) / std).clamp(-d_max, d_max)
    return r, d


def batch_renorm(input: Tensor, running_mean: Tensor, running_var: Tensor,
                 weight: Tensor | None = None, bias: Tensor | None = None,
                 training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                 r_max: float = 3.0, d_max: float = 5.0) -> Tensor:
    """Batch Renormalization over channel dimension 1 (Ioffe, 2017, Algorithm 1).

    In training, with batch statistics ``mu_B`` and ``sigma_B = sqrt(var_B + eps)`` and the
    correction ``(r, d)`` of :func:`renorm_correction` computed from the running statistics
    *before* this batch updates them:

    .. math::

        \\hat{x} = \\frac{x - \\mu_B}{\\sigma_B}\\, r + d, \\qquad y = \\gamma \\hat{x} + \\beta

    ``r`` and ``d`` get no gradient, so the input gradient is ``r`` times batch norm's. The
    running statistics are then updated exactly as in batch norm. Unclipped, ``r`` and ``d``
    turn the expression into ``(x - mu) / sigma``, the inference output; ``r_max = 1`` and
    ``d_max = 0`` give plain batch norm. Evaluation is batch norm with running statistics.

    Args:
        input: ``(N, C)`` or ``(N, C, *spatial)``.
        running_mean, running_var: ``(C,)`` buffers, updated in place in training.
        weight, bias: ``(C,)`` or ``None``.
        training: use batch statistics with the correction. Default: ``False``.
        momentum: as in batch norm. Default: ``0.1``.
        eps: added to the variance. Default: ``1e-5``.
        r_max, d_max: the clipping bounds. Default: ``3.0``, ``5.0``.

    Example:
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> batch_renorm(x, torch.zeros(1), torch.ones(1), training=True, eps=1e-12)
        tensor([[1.],
                [3.]])
    """
    if not training:
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    _check(input, running_mean, running_var, weight, bias, training, eps)
    with torch.no_grad():
        mean, var = batch_stats(input)  # (C,) each, before the buffers are updated
    r, d = renorm_correction(mean, torch.sqrt(var + eps), running_mean, running_var, eps,
                             r_max, d_max)
    # gamma (x_hat r + d) + beta is batch norm with weight gamma r and bias gamma d + beta;
    # BatchNormFunction then updates the running statistics exactly as batch norm does.
    scale = r if weight is None else weight * r.to(weight.dtype)
    shift = d if weight is None else weight * d.to(weight.dtype)
    shift = shift if bias is None else shift + bias
    return BatchNormFunction.apply(input, scale, shift, eps, running_mean, running_var,
                                   momentum)


class _BatchRenorm(_BatchNorm):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None,
                 dtype=None, *, bias: bool = True, r_max: float = 3.0,
                 d_max: float = 5.0) -> None:
        if not track_running_stats:
            raise NormError("Batch Renormalization corrects batch statistics towards the "
                             "running ones, so it needs track_running_stats=True")
        if r_max < 1 or d_max < 0:
            raise NormError(f"expected r_max >= 1 and d_max >= 0 (got r_max={r_max}, "
                             f"d_max={d_max})")
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype, bias=bias)
        self.r_max, self.d_max = r_max, d_max

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = momentum_factor(self)
        return batch_renorm(input, self.running_mean, self.running_var, self.weight,
                            self.bias, self.training, factor, self.eps, self.r_max, self.d_max)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", r_max={self.r_max}, d_max={self.d_max}"


class BatchRenorm1d(_BatchRenorm):
    """Batch Renormalization of ``(N, C)`` or ``(N, C, L)`` input; see :func:`batch_renorm`.

    Arguments as :class:`bnlib.torch.BatchNorm1d` (``track_running_stats`` must stay
    ``True``), plus keyword-only ``r_max`` (default ``3.0``) and ``d_max`` (default ``5.0``).
    They are plain attributes, so a training loop can anneal them from ``1`` and ``0``, as
    Ioffe (2017) does.

    Shape:
        Input ``(N, C)`` or ``(N, C, L)``; output the same.

    Example:
        >>> BatchRenorm1d(4, r_max=1.5, d_max=0.5)(torch.randn(8, 4)).shape
        torch.Size([8, 4])
    """

    _check_input_dim = BatchNorm1d._check_input_dim  # (N, C) or (N, C, L)


class BatchRenorm2d(_BatchRenorm):
    """Batch Renormalization of ``(N, C, H, W)`` input. Arguments as :class:`BatchRenorm1d`.

    Example:
        >>> BatchRenorm2d(3)(torch.randn(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """

    _check_input_dim = BatchNorm2d._check_input_dim  # (N, C, H, W)
