"""Synchronized batch norm over ``torch.distributed`` that works on CPU (gloo backend).

With data parallelism each process sees only its share of the batch, so plain batch norm
normalizes with statistics of the *per-process* batch. Synchronized batch norm gathers every
process's per-channel count, mean and sum of squared deviations, merges them (Chan, Golub &
LeVeque, 1982) into the statistics of the *global* batch, and in backward all-reduces the two
per-channel sums the input gradient needs. ``torch.nn.SyncBatchNorm`` refuses CPU tensors;
this module does not, and otherwise has its constructor, ``state_dict`` keys and results.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._errors import NormError
from ._stats import (channel_moments, channel_shape, merge_moments, momentum_factor,
                     opmath_dtype, reduce_dims, update_running_stats)
from .batchnorm import _BatchNorm
from ._common import check_dtypes

__all__ = ["SyncBatchNorm", "SyncBatchNormFunction", "merge_moments", "sync_batch_norm"]


def _global_moments(input: Tensor, group: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel count, mean and biased variance of ``input`` over all processes."""
    local = torch.stack(channel_moments(input))  # (3, C): count, mean, M2 in float64
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    # Merge in rank order, so every process computes bit-identical statistics.
    count, mean, m2 = gathered[0]
    for other in gathered[1:]:
        count, mean, m2 = merge_moments(count, mean, m2, *other)
    return count, mean, m2 / count


class SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm with global statistics in forward and the matching all-reduce in backward.

    Backward, with ``n`` the global count per channel and the two sums all-reduced:

    .. math::

        \\frac{\\partial L}{\\partial x_i} = \\frac{\\gamma}{\\sigma} \\Big(
            g_i - \\frac{1}{n}\\sum_j g_j - \\hat{x}_i \\frac{1}{n} \\sum_j g_j \\hat{x}_j \\Big),
        \\qquad g = \\frac{\\partial L}{\\partial y}

    The gradients of ``weight`` and ``bias`` are the *local* sums, as in torch; data-parallel
    training sums or averages them across processes with the other parameter gradients.
    """

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor | None, bias: Tensor | None,
                running_mean: Tensor | None, running_var: Tensor | None, eps: float,
                momentum: float, group: Any) -> Tensor:
        count, mean, var = _global_moments(input, group)  # (C,) each, float64
        n = int(count[0])
        if n <= 1:
            raise NormError(f"Expected more than 1 value per channel when training, got "
                            f"input size {input.size()} on each of "
                            f"{dist.get_world_size(group)} processes")
        update_running_stats(running_mean, running_var, mean, var, n, momentum)
        shape = channel_shape(input.dim(), input.shape[1])
        acc = opmath_dtype(input.dtype)
        invstd = torch.rsqrt(var + eps).to(acc)  # (C,)
        x_hat = (input.to(acc) - mean.to(acc).view(shape)) * invstd.view(shape)
        ctx.save_for_backward(x_hat, invstd, weight)
        ctx.group, ctx.count, ctx.dtype = group, n, input.dtype
        out = x_hat if weight is None else x_hat * weight.to(acc).view(shape)
        out = out if bias is None else out + bias.to(acc).view(shape)
        return out.to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        x_hat, invstd, weight = ctx.saved_tensors
        dims = reduce_dims(grad_output.dim())
        shape = channel_shape(grad_output.dim(), grad_output.shape[1])
        grad_output = grad_output.to(x_hat.dtype)
        sum_dy = grad_output.sum(dim=dims)  # (C,) local
        sum_dy_xhat = (grad_output * x_hat).sum(dim=dims)  # (C,) local
        sums = torch.stack([sum_dy, sum_dy_xhat])  # (2, C)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=ctx.group)  # global sums
        mean_dy, mean_dy_xhat = sums / ctx.count
        scale = invstd if weight is None else invstd * weight.to(invstd.dtype)  # (C,)
        grad_input = scale.view(shape) * (grad_output - mean_dy.view(shape)
                                          - x_hat * mean_dy_xhat.view(shape))
        grad_input = grad_input.to(ctx.dtype)
        grad_weight = sum_dy_xhat.to(weight.dtype) if weight is not None else None
        grad_bias = sum_dy if ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias, None, None, None, None, None


def sync_batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                    weight: Tensor | None = None, bias: Tensor | None = None,
                    momentum: float = 0.1, eps: float = 1e-5, process_group: Any = None
                    ) -> Tensor:
    """Training-mode batch norm with the statistics of the batch of *all* processes in
    ``process_group`` (default: the world). Each process passes its own share ``(N_k, C, *)``;
    the result equals batch norm of the concatenated batch, cut back into the shares.

    Args:
        input: this process's ``(N_k, C)`` or ``(N_k, C, *spatial)``; ``N_k`` may differ
            between processes and may be 1.
        running_mean, running_var: ``(C,)`` buffers or ``None``, updated in place with the
            global mean and unbiased variance (identical on every process).
        weight, bias: ``(C,)`` or ``None``.
        momentum: weight of the new batch in the running averages. Default: ``0.1``.
        eps: added to the variance. Default: ``1e-5``.
        process_group: a ``torch.distributed`` group. Default: ``None`` (the world).
    """
    group = process_group if process_group is not None else dist.group.WORLD
    return SyncBatchNormFunction.apply(input, weight, bias, running_mean, running_var, eps,
                                       momentum, group)


class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the global batch over all processes
    of a ``torch.distributed`` process group, on CPU or any device; see
    :func:`sync_batch_norm`.

    Without an initialized process group, with one process, or in eval mode it is plain
    batch norm (``torch.nn.SyncBatchNorm`` falls back in the same cases).

    Args:
        num_features, eps, momentum, affine, track_running_stats, bias: as
            :class:`bnlib.torch.BatchNorm1d`.
        process_group: the group to synchronize over; ``None`` for the world. Default: ``None``.

    Shape:
        Input ``(N, C, *)``, at least 2-D; output the same.

    Example:
        >>> # no process group: local statistics
        >>> SyncBatchNorm(3)(torch.randn(4, 3, 5)).shape
        torch.Size([4, 3, 5])
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Any | None = None, device=None, dtype=None, *,
                 bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype, bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise NormError(f"expected at least 2D input (got {input.dim()}D input)")

    def _world_size(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group or dist.group.WORLD)

    def forward(self, input: Tensor) -> Tensor:
        use_batch_stats = self.training or self.running_mean is None
        if not (self.training and use_batch_stats and self._world_size() > 1):
            return super().forward(input)  # local batch norm, as torch falls back
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise NormError(f"expected input with {self.num_features} channels (got "
                             f"{input.shape[1]} channels in input of shape "
                             f"{tuple(input.shape)})")
        check_dtypes(input, self.weight, self.bias, self.running_mean, self.running_var)
        factor = momentum_factor(self)
        return sync_batch_norm(input, self.running_mean if self.track_running_stats else None,
                               self.running_var if self.track_running_stats else None,
                               self.weight, self.bias, factor, self.eps, self.process_group)

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """Replace every batch-norm layer in ``module`` (of ``torch.nn`` or :mod:`bnlib.torch`,
        at any depth) by a :class:`SyncBatchNorm` sharing its parameters and buffers, as
        ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
            >>> converted = SyncBatchNorm.convert_sync_batchnorm(model)
            >>> type(converted[1]).__name__, converted[1].num_features
            ('SyncBatchNorm', 3)
        """
        output = module
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, _BatchNorm)) and \
                not isinstance(module, SyncBatchNorm):
            output = cls(module.num_features, module.eps, module.momentum, module.affine,
                         module.track_running_stats, process_group, bias=module.bias is not None)
            if module.affine:
                output.weight = module.weight
                output.bias = module.bias
            output.running_mean = module.running_mean
            output.running_var = module.running_var
            output.num_batches_tracked = module.num_batches_tracked
            output.training = module.training
        for name, child in module.named_children():
            output.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return output
