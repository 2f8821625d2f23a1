"""Rule 1 of chapter 4: a bias in the layer right before batch norm is cancelled.

Batch norm subtracts the batch mean, and a constant bias moves that mean by itself, so the
output and every other gradient are unchanged and the bias receives a zero gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["BiasCancellation", "bias_before_bn"]


@dataclass(frozen=True)
class BiasCancellation:
    """What :func:`bias_before_bn` measured.

    Attributes:
        output_difference: max ``|y_with_bias - y_without_bias|``.
        bias_grad_max: max ``|dL/db|`` of the bias before batch norm.
        weight_grad_max: max ``|dL/dW|`` of the weight beside it, for scale.
    """

    output_difference: float
    bias_grad_max: float
    weight_grad_max: float


def bias_before_bn(seed: int = 0, batch_size: int = 16, in_features: int = 8,
                   out_features: int = 4, bias_scale: float = 5.0,
                   norm_cls: type[nn.Module] = nn.BatchNorm1d) -> BiasCancellation:
    """Show that a bias before batch norm (training mode) changes nothing.

    Batch norm subtracts the batch mean, and a constant ``b`` shifts the mean by ``b``:

    .. math::

        \\mathrm{BN}(Wx + b) = \\gamma \\frac{Wx + b - (\\mu_{Wx} + b)}{\\sqrt{\\sigma^2_{Wx}
        + \\epsilon}} + \\beta = \\mathrm{BN}(Wx),

        \\frac{\\partial L}{\\partial b} = \\sum_i \\frac{\\partial L}{\\partial z_i} = 0 .

    Args:
        seed: seeds inputs, weights and the upstream gradient. Default: ``0``.
        batch_size, in_features, out_features: sizes. Defaults: ``16``, ``8``, ``4``.
        bias_scale: standard deviation of the random bias. Default: ``5.0``.
        norm_cls: the normalization class (a control: ``nn.LayerNorm`` does not cancel
            the bias). Default: ``torch.nn.BatchNorm1d``.

    Shape:
        inputs ``(batch_size, in_features)``, outputs ``(batch_size, out_features)``.

    Example:
        >>> r = bias_before_bn()
        >>> r.output_difference < 1e-12 and r.bias_grad_max < 1e-12 < r.weight_grad_max
        True
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, in_features, generator=g, dtype=torch.float64)
    weight = torch.randn(out_features, in_features, generator=g, dtype=torch.float64)
    bias = bias_scale * torch.randn(out_features, generator=g, dtype=torch.float64)
    dy = torch.randn(batch_size, out_features, generator=g, dtype=torch.float64)
    outputs, grads = [], []
    for b in (bias, None):
        linear = nn.Linear(in_features, out_features, bias=b is not None).double()
        with torch.no_grad():
            linear.weight.copy_(weight)
            if b is not None:
                linear.bias.copy_(b)
        y = norm_cls(out_features).double()(linear(x))  # (N, out_features)
        (y * dy).sum().backward()
        outputs.append(y.detach())
        grads.append((linear.weight.grad, linear.bias.grad if b is not None else None))
    return BiasCancellation(float((outputs[0] - outputs[1]).abs().max()),
                            float(grads[0][1].abs().max()), float(grads[0][0].abs().max()))
