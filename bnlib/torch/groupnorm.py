"""Group normalization (Wu & He, 2018), written from tensor operations, with the constructor,
``state_dict`` keys and results of ``torch.nn.GroupNorm``."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._affine import register_affine, reset_affine
from ._errors import NormError
from ._common import GradLayout, centre, check_dtypes, opmath, suggest_memory_format

__all__ = ["GroupNorm", "group_norm"]


def _check(input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None) -> None:
    if input.dim() < 2:
        raise NormError(f"Expected at least 2 dimensions for input tensor but received "
                        f"{input.dim()}: group_norm needs input of shape (N, C, *), got "
                        f"{list(input.shape)}")
    n, c = input.shape[:2]
    if num_groups <= 0 or c % num_groups != 0:
        raise NormError(f"Expected number of channels in input to be divisible by num_groups, "
                        f"but got input of shape {list(input.shape)} and "
                        f"num_groups={num_groups}")
    per_group = n * (c // num_groups) * math.prod(input.shape[2:])
    if per_group == 1:
        raise NormError(f"Expected more than 1 value per channel when training, got input size "
                        f"{[n * c // num_groups, num_groups] + list(input.shape[2:])}: each of "
                        f"the {num_groups} groups of input of shape {list(input.shape)} holds "
                        "one value, whose variance is undefined; use fewer groups or more "
                        "positions")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dim() != 1 or t.numel() != c):
            raise NormError(f"Expected {name} to be a vector of size equal to the number of "
                            f"channels in input, but got {name} of shape {list(t.shape)} and "
                            f"input of shape {list(input.shape)}")
    check_dtypes(input, weight, bias, op="group_norm")


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Group normalization, as ``torch.nn.functional.group_norm``.

    The ``C`` channels of each sample are split into ``G = num_groups`` groups of ``C / G``
    consecutive channels; each group is normalized with its own mean and biased variance over
    its channels and all spatial positions, then scaled and shifted per channel:

    .. math::

        y_{n,c} = \\frac{x_{n,c} - \\mu_{n,g(c)}}{\\sqrt{\\sigma^2_{n,g(c)} + \\epsilon}}
                  \\gamma_c + \\beta_c

    ``G = 1`` is layer norm over ``(C, *spatial)``; ``G = C`` is instance norm. As in torch:
    float16/bfloat16 input is normalized in float32 (with float32 or same-dtype parameters)
    and returned in its own dtype; the output (and the input gradient) is channels_last when
    the input's strides are; one value per group raises (torch checks it in eval mode too);
    an empty batch gives an empty output. The mean is subtracted before the variance is
    taken, and the mean's own rounding is corrected (``bnlib.torch._common.centre``), so
    a large mean/std ratio costs no float32 accuracy.

    Args:
        input: ``(N, C, *spatial)``.
        num_groups: ``G``, which must divide ``C``.
        weight, bias: ``(C,)`` or ``None``. Default: ``None``.
        eps: added to the variance. Default: ``1e-5``.

    Shape:
        Input ``(N, C, *)``; output the same.

    Raises:
        ~bnlib.torch._errors.NormError: fewer than 2 dims, ``G`` not dividing ``C``, one
            value per group, a parameter of the wrong size, or dtypes torch refuses ("mixed
            dtype").
        ~bnlib.torch._errors.NormTypeError: integer or boolean input.

    Example:
        >>> group_norm(torch.tensor([[1.0, 3.0, 0.0, 4.0]]), 2, eps=0.0)
        tensor([[-1.,  1., -1.,  1.]])
    """
    _check(input, num_groups, weight, bias)
    fmt = suggest_memory_format(input)
    acc = opmath(input.dtype)
    x = GradLayout.apply(input, fmt).to(acc)  # (N, C, *spatial) in fmt
    xg = x.unflatten(1, (num_groups, x.shape[1] // num_groups))  # (N, G, C/G, *spatial), a view
    dims = tuple(range(2, xg.dim()))
    centred = centre(xg, dims)  # subtract the mean before taking the variance
    inv_std = torch.rsqrt(centred.square().mean(dim=dims, keepdim=True) + eps)  # (N, G, 1..)
    out = (centred * inv_std).flatten(1, 2)  # (N, C, *spatial), still in fmt
    shape = [1, out.shape[1]] + [1] * (out.dim() - 2)
    # parameter gradients contiguous, whatever the layout of the upstream gradient
    if weight is not None:
        out = out * GradLayout.apply(weight, torch.contiguous_format).to(acc).view(shape)
    if bias is not None:
        out = out + GradLayout.apply(bias, torch.contiguous_format).to(acc).view(shape)
    return out.to(input.dtype)


class GroupNorm(nn.Module):
    """Group normalization over groups of channels of each sample; see :func:`group_norm`.

    Args:
        num_groups: ``G``; must divide ``num_channels``.
        num_channels: ``C``.
        eps: added to the variance. Default: ``1e-5``.
        affine: learn per-channel ``weight`` (ones) and ``bias`` (zeros). Default: ``True``.
        bias: keyword-only; with ``affine``, also learn the shift. Default: ``True``.

    Shape:
        Input ``(N, C, *)``; output the same.

    Example:
        >>> GroupNorm(2, 4)(torch.randn(3, 4, 5, 5)).shape
        torch.Size([3, 4, 5, 5])
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, device=None, dtype=None, *, bias: bool = True) -> None:
        super().__init__()
        if num_groups < 1 or num_channels % num_groups != 0:
            raise NormError(f"num_channels ({num_channels}) must be divisible by "
                            f"num_groups ({num_groups})")
        factory = {"device": device, "dtype": dtype}
        self.num_groups, self.num_channels = num_groups, num_channels
        self.eps, self.affine = eps, affine
        register_affine(self, num_channels, affine, bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        if self.affine and input.dim() >= 2 and input.shape[1] != self.num_channels:
            raise NormError(f"expected input with {self.num_channels} channels (got "
                            f"{input.shape[1]} channels in dim 1 of input of shape "
                            f"{tuple(input.shape)})")
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}, bias={self.bias is not None}")
