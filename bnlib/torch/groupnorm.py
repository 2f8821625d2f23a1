"""Group normalization (Wu & He, 2018), written from tensor operations, with the constructor,
``state_dict`` keys and results of ``torch.nn.GroupNorm``."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ._affine import register_affine, reset_affine

__all__ = ["GroupNorm", "group_norm"]


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Group normalization, as ``torch.nn.functional.group_norm``.

    The ``C`` channels of each sample are split into ``G = num_groups`` groups of ``C / G``
    consecutive channels; each group is normalized with its own mean and biased variance over
    its channels and all spatial positions, then scaled and shifted per channel:

    .. math::

        y_{n,c} = \\frac{x_{n,c} - \\mu_{n,g(c)}}{\\sqrt{\\sigma^2_{n,g(c)} + \\epsilon}}
                  \\gamma_c + \\beta_c

    ``G = 1`` is layer norm over ``(C, *spatial)``; ``G = C`` is instance norm.

    Args:
        input: ``(N, C, *spatial)``.
        num_groups: ``G``, which must divide ``C``.
        weight, bias: ``(C,)`` or ``None``.
        eps: added to the variance. Default: ``1e-5``.

    Example:
        >>> group_norm(torch.tensor([[1.0, 3.0, 0.0, 4.0]]), 2, eps=0.0)
        tensor([[-1.,  1., -1.,  1.]])
    """
    if input.dim() < 2:
        raise ValueError(f"expected 2D or higher input of shape (N, C, ...) "
                         f"(got {input.dim()}D input)")
    n, c = input.shape[:2]
    if c % num_groups != 0:
        raise ValueError(f"Expected number of channels in input to be divisible by num_groups, "
                         f"but got input of shape {list(input.shape)} and "
                         f"num_groups={num_groups}")
    x = input.reshape(n, num_groups, -1)  # (N, G, C/G * prod(spatial))
    mean = x.mean(dim=2, keepdim=True)  # (N, G, 1)
    var = (x - mean).square().mean(dim=2, keepdim=True)  # (N, G, 1) biased
    out = ((x - mean) * torch.rsqrt(var + eps)).reshape(input.shape)  # (N, C, *spatial)
    shape = [1, c] + [1] * (input.dim() - 2)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out


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
            raise ValueError(f"num_channels ({num_channels}) must be divisible by "
                             f"num_groups ({num_groups})")
        factory = {"device": device, "dtype": dtype}
        self.num_groups, self.num_channels = num_groups, num_channels
        self.eps, self.affine = eps, affine
        register_affine(self, num_channels, affine, bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() >= 2 and input.shape[1] != self.num_channels:
            raise ValueError(f"expected input with {self.num_channels} channels (got "
                             f"{input.shape[1]} channels in input of shape "
                             f"{tuple(input.shape)})")
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}, bias={self.bias is not None}")
