"""Instance normalization (Ulyanov, Vedaldi & Lempitsky, 2016), written from tensor
operations, with the constructor, buffers, ``state_dict`` keys and results of
``torch.nn.InstanceNorm1d/2d``."""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from ._errors import NormError, NormIndexError
from .autograd import BatchNormEvalFunction, BatchNormFunction
from .batchnorm import _NormBase
from ._common import check_dtypes

__all__ = ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "instance_norm"]


def instance_norm(input: Tensor, running_mean: Tensor | None = None,
                  running_var: Tensor | None = None, weight: Tensor | None = None,
                  bias: Tensor | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Instance normalization, as ``torch.nn.functional.instance_norm``.

    Each channel of each sample is normalized over its spatial positions only:

    .. math::

        y_{n,c} = \\frac{x_{n,c} - \\mu_{n,c}}{\\sqrt{\\sigma^2_{n,c} + \\epsilon}}
                  \\gamma_c + \\beta_c

    With running buffers and ``use_input_stats=True`` they move towards the average over the
    batch of the per-instance means and unbiased variances (PyTorch's convention); with
    ``use_input_stats=False`` the buffers are used instead of the instance statistics.

    Args:
        input: ``(N, C, *spatial)``.
        running_mean, running_var: ``(C,)`` buffers or ``None``.
        weight, bias: ``(C,)`` or ``None``.
        use_input_stats: normalize with each instance's own statistics. Default: ``True``.
        momentum: weight of the new statistics in the running averages. Default: ``0.1``.
        eps: added to the variance. Default: ``1e-5``.

    Example:
        >>> instance_norm(torch.tensor([[[1.0, 3.0]]]), eps=0.0)
        tensor([[[-1.,  1.]]])
    """
    if input.dim() < 3:
        # torch: IndexError for 1-D input (no dim 1), ValueError/RuntimeError otherwise
        raise (NormIndexError if input.dim() < 2 else NormError)(f"expected 3D or higher input of shape (N, C, *spatial) "
                        f"(got {input.dim()}D input)")
    if (running_mean is None) != (running_var is None):
        raise NormError("running_mean and running_var must either both be None or neither be "
                        "None")
    # torch checks the affine parameters' dtype against the input's (the batch-norm rule) but
    # accepts running buffers of any floating dtype here: they are cast, as in torch.
    check_dtypes(input, weight, bias, op="instance_norm")
    if (running_mean is not None and weight is None and bias is not None
            and input.dtype in (torch.float16, torch.bfloat16) and bias.dtype != input.dtype):
        # torch 2.13's CPU kernel refuses a float32 bias without a weight when there are
        # running buffers (it accepts one without buffers, or with a float32 weight too)
        raise NormError(f"mixed dtype (CPU): instance_norm got input of dtype {input.dtype}, "
                        f"running buffers and a bias of dtype {bias.dtype} but no weight; "
                        f"torch requires that bias to be {input.dtype} (or pass a float32 "
                        "weight, e.g. torch.ones_like(bias))")
    n, c = input.shape[:2]
    # Instance norm is batch norm of a batch of one with N * C channels (torch does the same).
    # torch reshapes a contiguous copy, so the output and the input gradient are contiguous.
    x = input.contiguous().view(1, n * c, *input.shape[2:])
    weight = None if weight is None else weight.repeat(n)
    bias = None if bias is None else bias.repeat(n)
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise NormError("running_mean and running_var are needed when "
                            "use_input_stats=False")
        out = BatchNormEvalFunction.apply(x, running_mean.repeat(n), running_var.repeat(n),
                                          weight, bias, eps)
        return out.view(input.shape)
    if math.prod(input.shape[2:]) == 1:
        raise NormError(f"Expected more than 1 spatial element when training, "
                        f"got input size {input.size()}")
    # Per-instance running buffers, updated by the core, then averaged over the batch.
    # torch updates them in the input's dtype (float32 buffers stay float32 for a
    # float16/bfloat16 input: the mixed-precision pattern), then casts back to the buffers'.
    stat_dtype = input.dtype
    if running_mean is not None and input.dtype in (torch.float16, torch.bfloat16) \
            and running_mean.dtype == torch.float32:
        stat_dtype = torch.float32
    mean_rep = None if running_mean is None else running_mean.to(stat_dtype).repeat(n)
    var_rep = None if running_var is None else running_var.to(stat_dtype).repeat(n)
    out = BatchNormFunction.apply(x, weight, bias, eps, mean_rep, var_rep, momentum)
    with torch.no_grad():
        if running_mean is not None:
            running_mean.copy_(mean_rep.view(n, c).mean(dim=0))
        if running_var is not None:
            running_var.copy_(var_rep.view(n, c).mean(dim=0))
    return out.view(input.shape)


class _InstanceNorm(_NormBase):
    """Instance norm: the parameters and buffers of batch norm, defaults ``affine=False`` and
    ``track_running_stats=False``; a momentum of ``None`` freezes the buffers (as in torch)."""

    _no_batch_dim: int  # input dims of an unbatched sample

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = False, track_running_stats: bool = False,
                 device=None, dtype=None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype, bias=bias)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (self._no_batch_dim, self._no_batch_dim + 1):
            raise NormError(f"expected {self._no_batch_dim}D or {self._no_batch_dim + 1}D "
                             f"input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        feature_dim = input.dim() - self._no_batch_dim
        if input.size(feature_dim) != self.num_features:
            if self.affine or self.track_running_stats:
                raise NormError(f"expected input's size at dim={feature_dim} to match "
                                 f"num_features ({self.num_features}), but got: "
                                 f"{input.size(feature_dim)}.")
            warnings.warn(f"input's size at dim={feature_dim} does not match num_features. "
                          "You can silence this warning by not passing in num_features, "
                          "which is not used because affine=False", stacklevel=2)
        unbatched = input.dim() == self._no_batch_dim
        x = input.unsqueeze(0) if unbatched else input  # (N, C, *spatial)
        out = instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training or not self.track_running_stats,
                            0.0 if self.momentum is None else self.momentum, self.eps)
        return out.squeeze(0) if unbatched else out


class InstanceNorm1d(_InstanceNorm):
    """Instance normalization of ``(N, C, L)`` or unbatched ``(C, L)`` input: each channel
    of each sample over ``L``; see :func:`instance_norm`.

    Args:
        num_features: ``C``.
        eps: added to the variance. Default: ``1e-5``.
        momentum: weight of new statistics in the running averages. Default: ``0.1``.
        affine: learn per-channel ``weight`` and ``bias``. Default: ``False``.
        track_running_stats: keep running averages and use them in eval mode.
            Default: ``False``.
        bias: keyword-only; with ``affine``, also learn the shift. Default: ``True``.

    Shape:
        Input ``(N, C, L)`` or ``(C, L)``; output the same.

    Example:
        >>> InstanceNorm1d(3)(torch.randn(2, 3, 5)).shape
        torch.Size([2, 3, 5])
    """

    _no_batch_dim = 2


class InstanceNorm2d(_InstanceNorm):
    """Instance normalization of ``(N, C, H, W)`` or unbatched ``(C, H, W)`` input: each
    channel of each sample over ``H`` and ``W``. Arguments as :class:`InstanceNorm1d`.

    Example:
        >>> InstanceNorm2d(3)(torch.randn(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """

    _no_batch_dim = 3


class InstanceNorm3d(_InstanceNorm):
    """Instance normalization of ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` input:
    each channel of each sample over ``D``, ``H`` and ``W``. Arguments as
    :class:`InstanceNorm1d`.

    Example:
        >>> InstanceNorm3d(3)(torch.randn(2, 3, 2, 4, 4)).shape
        torch.Size([2, 3, 2, 4, 4])
    """

    _no_batch_dim = 4
