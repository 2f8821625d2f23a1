"""Layer normalization and RMS normalization, written from tensor operations, with the
constructor, ``state_dict`` keys and results of ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm``.

Both normalize each sample over its last ``len(normalized_shape)`` dimensions, so they do not
depend on the batch: training and evaluation compute the same function.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch
from torch import Tensor, nn

from ._affine import register_affine, reset_affine
from ._common import GradLayout, centre, check_dtypes, opmath, suggest_memory_format
from ._errors import NormError

__all__ = ["LayerNorm", "RMSNorm", "layer_norm", "rms_norm"]

_Shape = int | Sequence[int] | torch.Size


def _as_shape(normalized_shape: _Shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(int(s) for s in normalized_shape)


def check_normalized_shape(input: Tensor, normalized_shape: Sequence[int],
                           *params: tuple[str, Tensor | None]) -> tuple[int, ...]:
    """The dimensions to normalize over, after checking that ``input`` ends in
    ``normalized_shape`` and that each ``(name, tensor)`` parameter has that shape (PyTorch's
    wording, raised as :class:`~bnlib.torch._errors.NormError`)."""
    shape = list(normalized_shape)
    k = len(shape)
    if k == 0:
        raise NormError("Expected normalized_shape to be at least 1-dimensional, i.e., "
                        "containing at least one element, but got normalized_shape = []")
    for name, t in params:
        if t is not None and list(t.shape) != shape:
            raise NormError(f"Expected {name} to be of same shape as normalized_shape, but got "
                            f"{name} of shape {list(t.shape)} and normalized_shape = {shape}")
    if input.dim() < k or list(input.shape[-k:]) != shape:
        expected = ", ".join(str(s) for s in shape)
        raise NormError(f"Given normalized_shape={shape}, expected input with shape "
                        f"[*, {expected}], but got input of size{list(input.shape)}")
    return tuple(range(input.dim() - k, input.dim()))


def layer_norm(input: Tensor, normalized_shape: Sequence[int], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Layer normalization, as ``torch.nn.functional.layer_norm``.

    .. math::

        y = \\frac{x - \\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}}
            \\odot \\gamma + \\beta

    with mean and biased variance over the last ``len(normalized_shape)`` dimensions of each
    sample, and ``gamma``/``beta`` of shape ``normalized_shape``. As in torch: float16 and
    bfloat16 input is normalized in float32 (with float32 or same-dtype parameters) and
    returned in its own dtype; the output and the input gradient are contiguous whatever the
    input's strides. The mean is subtracted before the variance is taken, and the mean's own
    rounding is corrected (``bnlib.torch._common.centre``), so a large mean/std ratio
    costs no float32 accuracy.

    Args:
        input: ``(*, *normalized_shape)``.
        normalized_shape: the trailing shape to normalize over.
        weight, bias: ``normalized_shape`` tensors or ``None``. Default: ``None``.
        eps: added to the variance. Default: ``1e-5``.

    Shape:
        Input ``(*, *normalized_shape)``; output the same.

    Raises:
        ~bnlib.torch._errors.NormError: a shape that does not end in ``normalized_shape``,
            parameters of another shape, or dtypes torch refuses ("mixed dtype").
        ~bnlib.torch._errors.NormTypeError: integer or boolean input.

    Example:
        >>> layer_norm(torch.tensor([[1.0, 3.0]]), (2,), eps=0.0)
        tensor([[-1.,  1.]])
    """
    dims = check_normalized_shape(input, normalized_shape, ("weight", weight), ("bias", bias))
    check_dtypes(input, weight, bias, op="layer_norm")
    acc = opmath(input.dtype)
    x = GradLayout.apply(input, torch.contiguous_format).to(acc)
    centred = centre(x, dims)  # (*, *normalized_shape)
    out = centred * torch.rsqrt(centred.square().mean(dim=dims, keepdim=True) + eps)
    # parameter gradients contiguous too, whatever the layout of the upstream gradient
    if weight is not None:
        out = out * GradLayout.apply(weight, torch.contiguous_format).to(acc)
    if bias is not None:
        out = out + GradLayout.apply(bias, torch.contiguous_format).to(acc)
    return out.to(input.dtype)


def rms_norm(input: Tensor, normalized_shape: Sequence[int], weight: Tensor | None = None,
             eps: float | None = None) -> Tensor:
    """Root-mean-square normalization (Zhang & Sennrich, 2019), as
    ``torch.nn.functional.rms_norm``: no centring, no shift.

    .. math::

        y = \\frac{x}{\\sqrt{\\mathrm{E}[x^2] + \\epsilon}} \\odot \\gamma

    As in torch: float16/bfloat16 input is computed in float32 and returned in its own dtype;
    a weight of another dtype is promoted (no "mixed dtype" error); the output is contiguous
    unless the input's strides look channels_last; the input gradient follows the upstream
    gradient's layout.

    Args:
        input: ``(*, *normalized_shape)``.
        normalized_shape: the trailing shape to normalize over.
        weight: a ``normalized_shape`` tensor or ``None``. Default: ``None``.
        eps: added to the mean square; ``None`` means ``torch.finfo(dtype).eps`` of the dtype
            the statistics are computed in (float32 for float16/bfloat16 input, as torch).
            Default: ``None``.

    Shape:
        Input ``(*, *normalized_shape)``; output the same.

    Raises:
        ~bnlib.torch._errors.NormError: a shape that does not end in ``normalized_shape``
            or a weight of another shape.
        ~bnlib.torch._errors.NormTypeError: integer or boolean input.

    Example:
        >>> rms_norm(torch.tensor([[3.0, -3.0]]), (2,), eps=0.0)
        tensor([[ 1., -1.]])
    """
    dims = check_normalized_shape(input, normalized_shape, ("weight", weight))
    check_dtypes(input, op="rms_norm")  # floating input; torch promotes a weight of another dtype
    acc = opmath(input.dtype)
    if eps is None:
        eps = torch.finfo(acc).eps
    channels_last = suggest_memory_format(input) != torch.contiguous_format
    x = (input if channels_last else input.contiguous()).to(acc)
    out = x * torch.rsqrt(x.square().mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out.to(input.dtype)


class LayerNorm(nn.Module):
    """Layer normalization over the trailing ``normalized_shape`` of each sample
    (Ba, Kiros & Hinton, 2016); see :func:`layer_norm`.

    Args:
        normalized_shape: an int or a shape, e.g. ``C`` or ``(C, H, W)``.
        eps: added to the variance. Default: ``1e-5``.
        elementwise_affine: learn ``weight`` (ones) and ``bias`` (zeros) of shape
            ``normalized_shape``. Default: ``True``.
        bias: with ``elementwise_affine``, also learn the shift. Default: ``True``.

    Shape:
        Input ``(*, *normalized_shape)``; output the same.

    Example:
        >>> LayerNorm(4)(torch.randn(2, 3, 4)).shape
        torch.Size([2, 3, 4])
    """

    def __init__(self, normalized_shape: _Shape, eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        register_affine(self, self.normalized_shape, elementwise_affine, bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}")


class RMSNorm(nn.Module):
    """Root-mean-square normalization over the trailing ``normalized_shape``; see
    :func:`rms_norm`.

    Args:
        normalized_shape: an int or a shape.
        eps: added to the mean square; ``None`` means the machine epsilon of the input's dtype.
            Default: ``None``.
        elementwise_affine: learn ``weight`` (ones) of shape ``normalized_shape``.
            Default: ``True``.

    Shape:
        Input ``(*, *normalized_shape)``; output the same.

    Example:
        >>> RMSNorm(4)(torch.randn(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(self, normalized_shape: _Shape, eps: float | None = None,
                 elementwise_affine: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, device=device,
                                                   dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            nn.init.ones_(self.weight)

    def forward(self, input: Tensor) -> Tensor:
        return rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")
