"""Batch-norm modules with the constructor, buffers, ``state_dict`` keys, errors and results
of ``torch.nn.BatchNorm1d/2d/3d``, computed by :func:`bnlib.torch.functional.batch_norm`.

The hierarchy mirrors ``torch/nn/modules/batchnorm.py``: :class:`_NormBase` owns the
parameters and buffers, :class:`_BatchNorm` the forward pass, and each leaf class only checks
the number of input dimensions.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ._affine import register_affine, reset_affine
from ._errors import NormError
from ._stats import momentum_factor
from .functional import batch_norm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _NormBase(nn.Module):
    """Parameters (``weight``, ``bias``) and buffers (``running_mean``, ``running_var``,
    ``num_batches_tracked``) shared by the batch-norm modules."""

    _version = 2

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 device=None, dtype=None, *, bias: bool = True) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        register_affine(self, num_features, affine, bias, **factory)
        if track_running_stats:
            # Buffers: saved in state_dict, moved by .to(), never part of the autograd graph.
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(
                0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        reset_affine(self)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ("{num_features}, eps={eps}, momentum={momentum}, affine={affine}, "
                "bias={use_bias}, track_running_stats={track_running_stats}".format(
                    **self.__dict__, use_bias=self.bias is not None))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs) -> None:
        # state_dicts from before version 2 have no num_batches_tracked: keep the module's
        # current count (torch 2.13 does the same; it is 0 on a fresh module).
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            count = self.num_batches_tracked
            keep = count is not None and count.device != torch.device("meta")
            state_dict[key] = count if keep else torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)


class _BatchNorm(_NormBase):
    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = momentum_factor(self)  # counts the batch in training
        # Batch statistics in training, and in evaluation when no running statistics exist.
        use_batch_stats = self.training or (self.running_mean is None
                                            and self.running_var is None)
        update_buffers = not self.training or self.track_running_stats
        return batch_norm(
            input,
            self.running_mean if update_buffers else None,
            self.running_var if update_buffers else None,
            self.weight, self.bias, use_batch_stats, factor, self.eps)


def _dim_error(expected: str, input: Tensor) -> NormError:
    return NormError(f"expected {expected} input (got {input.dim()}D input)")


class BatchNorm1d(_BatchNorm):
    """Batch normalization over a 2-D ``(N, C)`` or 3-D ``(N, C, L)`` input.

    Statistics are per channel ``C`` over ``N`` (and ``L``). See
    :class:`bnlib.numpy.BatchNorm` for the running-statistics update.

    Args:
        num_features: ``C``.
        eps: added to the variance. Default: ``1e-5``.
        momentum: weight of the new batch in the running averages, ``None`` for a cumulative
            average. Default: ``0.1``.
        affine: learnable ``weight`` and ``bias``. Default: ``True``.
        track_running_stats: keep ``running_mean``/``running_var``. Default: ``True``.
        bias: keyword-only; with ``affine=True``, ``False`` learns a scale but no shift.
            Default: ``True``.

    Shape:
        Input ``(N, C)`` or ``(N, C, L)``; output the same.

    Example:
        >>> bn = BatchNorm1d(4)
        >>> bn(torch.randn(8, 4)).shape
        torch.Size([8, 4])
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise _dim_error("2D or 3D", input)


class BatchNorm2d(_BatchNorm):
    """Batch normalization over a 4-D ``(N, C, H, W)`` input: statistics per channel over
    ``N``, ``H`` and ``W``. Arguments as :class:`BatchNorm1d`.

    Example:
        >>> BatchNorm2d(3)(torch.randn(2, 3, 5, 5)).shape
        torch.Size([2, 3, 5, 5])
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise _dim_error("4D", input)


class BatchNorm3d(_BatchNorm):
    """Batch normalization over a 5-D ``(N, C, D, H, W)`` input. Arguments as
    :class:`BatchNorm1d`.

    Example:
        >>> BatchNorm3d(3)(torch.randn(2, 3, 4, 4, 4)).shape
        torch.Size([2, 3, 4, 4, 4])
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise _dim_error("5D", input)
