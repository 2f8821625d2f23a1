"""Weight standardization (Qiao et al. 2019): normalize each output unit's weights.

Group normalization (GN) does not depend on the batch, but at large batches it trails batch
normalization (BN). Qiao et al. pair it with *weight standardization* (WS): before every
forward pass, each output unit's weight vector (a row of a Linear weight, a filter of a
Conv2d) is centred and scaled to unit variance over its fan-in. Like GN, WS uses no batch
statistics, so GN + WS trains the same way at any batch size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["standardize_weight", "WSLinear", "WSConv2d", "with_weight_standardization"]


def standardize_weight(weight: Tensor, eps: float = 1e-5) -> Tensor:
    r"""Standardize each output unit's weights over its fan-in.

    For output unit :math:`i` with fan-in :math:`n` (all dimensions but the first),

    .. math::
        \mu_i = \frac{1}{n} \sum_j W_{ij}, \qquad
        \sigma_i^2 = \frac{1}{n} \sum_j (W_{ij} - \mu_i)^2, \qquad
        \hat W_{ij} = \frac{W_{ij} - \mu_i}{\sqrt{\sigma_i^2 + \epsilon}} .

    Gradients flow through :math:`\mu_i` and :math:`\sigma_i` (the standardization is part of
    the model, as in Qiao et al. 2019).

    Args:
        weight: ``(C_out, *)``, e.g. ``(C_out, C_in)`` or ``(C_out, C_in, kH, kW)``.
        eps: added to the variance. Default: ``1e-5``.

    Shape:
        Output: the shape of ``weight``.

    Example:
        >>> w = standardize_weight(torch.tensor([[1.0, 3.0], [0.0, 10.0]]), eps=0.0)
        >>> w
        tensor([[-1.,  1.],
                [-1.,  1.]])
    """
    if weight.dim() < 2:
        raise ValueError(f"expected a weight with 2 or more dimensions (got {weight.dim()}D)")
    dims = tuple(range(1, weight.dim()))
    mean = weight.mean(dim=dims, keepdim=True)  # (C_out, 1, ...)
    var = weight.var(dim=dims, unbiased=False, keepdim=True)  # (C_out, 1, ...)
    return (weight - mean) / torch.sqrt(var + eps)


class WSLinear(nn.Linear):
    """``nn.Linear`` whose weight is standardized by :func:`standardize_weight` at every
    forward pass.

    Args:
        in_features, out_features, bias: as ``nn.Linear``. Default ``bias``: ``True``.
        eps: keyword-only, as :func:`standardize_weight`. Default: ``1e-5``.

    Shape:
        Input ``(N, in_features)``; output ``(N, out_features)``.

    Example:
        >>> layer = WSLinear(4, 3)
        >>> layer(torch.randn(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None, *, eps: float = 1e-5) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.eps = eps

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, standardize_weight(self.weight, self.eps), self.bias)


class WSConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose filters are standardized by :func:`standardize_weight` at every
    forward pass.

    Args:
        *args: as ``nn.Conv2d``.
        **kwargs: as ``nn.Conv2d``.
        eps: keyword-only, as :func:`standardize_weight`. Default: ``1e-5``.

    Shape:
        As ``nn.Conv2d``.

    Example:
        >>> WSConv2d(1, 4, 3, padding=1)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(self, *args, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, standardize_weight(self.weight, self.eps), self.bias)


def _ws_copy(layer: nn.Module, eps: float) -> nn.Module:
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if type(layer) is nn.Linear:
        new = WSLinear(layer.in_features, layer.out_features, layer.bias is not None,
                       eps=eps, **factory)
    else:
        new = WSConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                       layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                       layer.padding_mode, eps=eps, **factory)
    new.load_state_dict(layer.state_dict())
    return new


def with_weight_standardization(model: nn.Sequential, eps: float = 1e-5) -> nn.Sequential:
    """Replace every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` but the last (the
    classifier) by its weight-standardized twin with the same parameters, in place.

    The classifier keeps plain weights: no normalization follows it that could undo the
    scale WS removes, as in Qiao et al. (2019).

    Args:
        model: an ``nn.Sequential`` (nested containers are searched).
        eps: as :func:`standardize_weight`. Default: ``1e-5``.

    Returns:
        ``model``.

    Example:
        >>> net = with_weight_standardization(nn.Sequential(nn.Linear(4, 3), nn.ReLU(),
        ...                                                 nn.Linear(3, 2)))
        >>> [type(m).__name__ for m in net]
        ['WSLinear', 'ReLU', 'Linear']
    """
    found = [(parent, name) for parent in model.modules()
             for name, child in parent.named_children()
             if type(child) in (nn.Linear, nn.Conv2d)]
    if not found:
        raise ValueError("expected a model with nn.Linear or nn.Conv2d layers (found none)")
    for parent, name in found[:-1]:
        setattr(parent, name, _ws_copy(getattr(parent, name), eps))
    return model
