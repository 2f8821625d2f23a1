"""Batch-norm modules with the constructor, buffers, ``state_dict`` keys, errors and results
of ``torch.nn.BatchNorm1d/2d/3d``, computed by :func:`bnlib.torch.functional.batch_norm`.

The hierarchy is ``torch/nn/modules/batchnorm.py``'s and derives from it: :class:`_NormBase`
owns the parameters and buffers (torch's own bookkeeping), :class:`_BatchNorm` the forward
pass (bnlib's), and each leaf class only checks the number of input dimensions. So
``isinstance(m, torch.nn.modules.batchnorm._BatchNorm)`` holds for bnlib's batch norms, as
code such as ``torch.optim.swa_utils.update_bn`` expects.
"""
from __future__ import annotations

import torch  # noqa: F401 (the docstring examples use it)
from torch import Tensor
from torch.nn.modules import batchnorm as _torch_bn

from ._errors import NormError
from ._stats import momentum_factor
from .functional import batch_norm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _NormBase(_torch_bn._NormBase):
    """Parameters (``weight``, ``bias``) and buffers (``running_mean``, ``running_var``,
    ``num_batches_tracked``) shared by the batch- and instance-norm modules.

    It *is* ``torch.nn.modules.batchnorm._NormBase`` and inherits only its bookkeeping: the
    constructor (the same parameters and buffers, registered under the same names),
    ``reset_parameters``/``reset_running_stats`` (scale 1, shift 0, mean 0, variance 1, count
    0), ``extra_repr``, ``_version = 2`` and the ``state_dict`` load hook (a checkpoint
    without ``num_batches_tracked`` keeps the module's current count). No arithmetic on
    inputs is inherited: every ``forward`` below is bnlib's.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError


class _BatchNorm(_NormBase, _torch_bn._BatchNorm):
    """The batch-norm forward pass. An instance of ``torch.nn.modules.batchnorm._BatchNorm``
    (through ``_NormBase``), so code that finds batch norm by type treats bnlib's layers as
    torch's: ``torch.optim.swa_utils.update_bn``, ``torch.nn.utils.fuse_conv_bn_eval``,
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``. Its ``forward`` replaces torch's."""

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
