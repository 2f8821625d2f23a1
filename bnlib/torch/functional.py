"""``batch_norm`` with the signature, errors and results of
``torch.nn.functional.batch_norm``, computed by the autograd Functions of
:mod:`bnlib.torch.autograd` from the statistics core ``bnlib.torch._stats``."""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_dtypes
from ._errors import NormError
from ._stats import values_per_channel
from .autograd import BatchNormEvalFunction, BatchNormFunction, batch_norm_graph

__all__ = ["batch_norm", "verify_batch_size"]


def verify_batch_size(size: torch.Size) -> None:
    """Refuse a training batch with one value per channel, in PyTorch's words."""
    if values_per_channel(size) == 1:
        raise NormError(
            f"Expected more than 1 value per channel when training, got input size {size}")


def _check(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
           weight: Tensor | None, bias: Tensor | None, training: bool, eps: float) -> None:
    if input.dim() < 2:
        raise NormError(f"expected 2D or higher input of shape (N, C, ...) "
                        f"(got {input.dim()}D input)")
    # torch's order: batch size and eps (torch.nn.functional), then the kernel's checks.
    if training:
        verify_batch_size(input.size())
        if not eps > 0:
            raise NormError(f"batch_norm eps must be positive during training, but got {eps}")
    elif not eps >= 0:
        raise NormError(f"batch_norm eps must be non-negative, but got {eps}")
    if (running_mean is None) != (running_var is None):
        raise NormError("running_mean and running_var must either both be None or neither be "
                        "None (got only "
                        f"{'running_mean' if running_var is None else 'running_var'})")
    check_dtypes(input, weight, bias, running_mean, running_var)
    num_channels = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != num_channels:
            raise NormError(f"expected input with {t.numel()} channels to match {name} "
                            f"(got {num_channels} channels in dim 1 of input of shape "
                            f"{tuple(input.shape)})")
    if not training and running_mean is None:
        raise NormError("running_mean and running_var are needed when training=False")


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalization over channel dimension 1, as ``torch.nn.functional.batch_norm``.

    .. math::

        y = \\gamma \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} + \\beta

    With ``training=True``, ``mu`` and ``sigma^2`` are the input's own per-channel mean and
    biased variance, and the running statistics, when given, are updated in place (without
    autograd history) with the unbiased variance:
    ``running = (1 - momentum) * running + momentum * batch_statistic``
    (:class:`bnlib.torch.BatchNormFunction`). With ``training=False`` they are the running
    statistics: one affine map per channel (:class:`bnlib.torch.autograd.BatchNormEvalFunction`).
    Under ``torch.compile`` the same math runs as plain tensor operations
    (:func:`bnlib.torch.autograd.batch_norm_graph`), which the compiler fuses.

    As in torch: a float16/bfloat16 input with float32 parameters and buffers returns the
    input's dtype with statistics kept in float32; an empty input returns an empty output
    and leaves the buffers alone; the errors are torch's, as
    :class:`~bnlib.torch._errors.NormError` (a ``ValueError`` and ``RuntimeError``).

    Args:
        input: ``(N, C)`` or ``(N, C, *spatial)``.
        running_mean, running_var: ``(C,)`` buffers, or both ``None``.
        weight, bias: ``(C,)`` affine parameters or ``None``.
        training: use batch statistics. Default: ``False``.
        momentum: weight of the new batch in the running averages. Default: ``0.1``.
        eps: added to the variance; ``> 0`` in training, ``>= 0`` otherwise.
            Default: ``1e-5``.

    Shape:
        Output: like ``input``, in torch's memory format (channels_last stays channels_last).

    Example:
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> batch_norm(x, None, None, training=True, eps=1e-12)
        tensor([[-1.],
                [ 1.]])
    """
    if input.dim() < 2 and input.numel() == 0:  # torch returns an empty tensor here
        return input.clone()
    _check(input, running_mean, running_var, weight, bias, training, eps)
    if torch.compiler.is_compiling():  # let the compiler fuse the plain graph
        return batch_norm_graph(input, weight, bias, eps, running_mean, running_var,
                                momentum, training)
    if training:
        return BatchNormFunction.apply(input, weight, bias, eps, running_mean, running_var,
                                       momentum)
    return BatchNormEvalFunction.apply(input, running_mean, running_var, weight, bias, eps)
