"""Training-mode batch normalization as a ``torch.autograd.Function`` with the hand-derived
backward pass (the compact form of :func:`bnlib.numpy.batch_norm_backward`)."""
from __future__ import annotations

import torch
from torch import Tensor

from .functional import verify_batch_size

__all__ = ["BatchNormFunction"]


class BatchNormFunction(torch.autograd.Function):
    """``y = weight * (x - mean) / sqrt(var + eps) + bias`` with batch statistics, and

    .. math::

        \\frac{\\partial L}{\\partial x} = \\frac{\\gamma}{m \\sqrt{\\sigma^2 + \\epsilon}}
        \\Big( m\\, g - \\textstyle\\sum g - \\hat{x} \\sum g \\hat{x} \\Big)

    in ``backward`` (sums per channel over the ``m`` values of that channel). Autograd
    records one node instead of the nine of the elementwise graph, and saves only ``x_hat``
    and ``1/std``.

    Example:
        >>> x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        >>> w = torch.ones(3, dtype=torch.float64, requires_grad=True)
        >>> b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        >>> torch.autograd.gradcheck(BatchNormFunction.apply, (x, w, b, 1e-5))
        True
    """

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
        verify_batch_size(input.size())
        dims = [0] + list(range(2, input.dim()))
        shape = [1, input.shape[1]] + [1] * (input.dim() - 2)
        mean = input.mean(dim=dims, keepdim=True)  # (1, C, 1, ...)
        inv_std = torch.rsqrt((input - mean).square().mean(dim=dims, keepdim=True) + eps)
        x_hat = (input - mean) * inv_std  # (N, C, *spatial)
        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.dims, ctx.shape = dims, shape
        return x_hat * weight.view(shape) + bias.view(shape)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x_hat, inv_std, weight = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        m = x_hat.numel() // x_hat.shape[1]
        grad_bias = grad_out.sum(dim=dims)  # (C,)
        grad_weight = (grad_out * x_hat).sum(dim=dims)  # (C,)
        scale = weight.view(shape) * inv_std / m  # (1, C, 1, ...)
        grad_input = scale * (m * grad_out - grad_bias.view(shape)
                              - x_hat * grad_weight.view(shape))
        return grad_input, grad_weight, grad_bias, None


