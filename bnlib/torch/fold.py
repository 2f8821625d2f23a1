"""Folding batch norm into the preceding Conv or Linear layer for inference.

In evaluation mode batch norm is a fixed per-channel affine map, so ``bn(layer(x))`` is again
a Conv/Linear layer with rescaled weights and a new bias: one layer fewer to run.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ._errors import NormError
from ._stats import eval_scale
from .precise import is_batch_norm

__all__ = ["fold_all_bn", "fold_bn"]

_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fold_bn(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``layer`` (Conv1d/2d/3d or Linear) whose output equals ``bn(layer(x))`` in
    evaluation mode.

    With ``s = gamma / sqrt(running_var + eps)`` per output channel:

    .. math::

        W' = s \\odot W, \\qquad b' = s \\odot (b - \\mu_{\\text{running}}) + \\beta

    (``b = 0`` when the layer has no bias, ``gamma = 1`` and ``beta = 0`` when ``bn`` is not
    affine). Equal to ``torch.nn.utils.fusion.fuse_conv_bn_eval`` / ``fuse_linear_bn_eval``.

    Args:
        layer: ``nn.Linear`` or ``nn.Conv1d/2d/3d``, in eval mode.
        bn: a batch-norm layer of ``torch.nn`` or :mod:`bnlib.torch` with running statistics,
            in eval mode, with ``num_features`` equal to the layer's output channels.

    Returns:
        A new layer with a bias; ``layer`` and ``bn`` are unchanged.

    Example:
        >>> conv, bn = nn.Conv2d(1, 4, 3).eval(), nn.BatchNorm2d(4).eval()
        >>> x = torch.randn(2, 1, 5, 5)
        >>> torch.allclose(fold_bn(conv, bn)(x), bn(conv(x)), atol=1e-6)
        True
    """
    if not isinstance(layer, _FOLDABLE):
        raise NormError(f"expected nn.Linear or nn.Conv1d/2d/3d to fold into "
                         f"(got {type(layer).__name__})")
    if not is_batch_norm(bn):
        raise NormError(f"expected a batch-norm layer to fold (got {type(bn).__name__})")
    if layer.training or bn.training:
        raise NormError("folding is only valid in evaluation mode: in training batch norm "
                         "uses batch statistics; call model.eval() first")
    if bn.running_mean is None:
        raise NormError("expected a batch-norm layer with running statistics "
                         "(got track_running_stats=False)")
    out_channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if out_channels != bn.num_features:
        raise NormError(f"expected {type(bn).__name__} with {out_channels} features to match "
                         f"the layer's output channels (got {bn.num_features})")
    folded = copy.deepcopy(layer)
    with torch.no_grad():
        scale = eval_scale(bn.running_var, bn.weight, bn.eps)  # (C_out,)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * scale  # (C_out,)
        if bn.bias is not None:
            new_bias = new_bias + bn.bias
        shape = [-1] + [1] * (layer.weight.dim() - 1)
        folded.weight = nn.Parameter((layer.weight * scale.view(shape)).to(layer.weight.dtype),
                                     requires_grad=layer.weight.requires_grad)
        folded.bias = nn.Parameter(new_bias.to(layer.weight.dtype),
                                   requires_grad=layer.weight.requires_grad)
    return folded


def _fold_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    for name, next_name in zip(names, names[1:]):
        layer, bn = seq._modules[name], seq._modules[next_name]
        if isinstance(layer, _FOLDABLE) and is_batch_norm(bn) and bn.running_mean is not None:
            seq._modules[name] = fold_bn(layer, bn)
            seq._modules[next_name] = nn.Identity()


def fold_all_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every Conv/Linear directly followed by batch norm inside
    an ``nn.Sequential`` (at any depth) is replaced by :func:`fold_bn` of the pair, and the
    batch norm by ``nn.Identity``.

    The copy computes the same function as ``model`` in evaluation mode; batch-norm layers
    without running statistics, or not preceded by a Conv/Linear, are left in place.

    Args:
        model: a network in eval mode (``model.eval()``).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU()).eval()
        >>> fold_all_bn(model)
        Sequential(
          (0): Linear(in_features=4, out_features=3, bias=True)
          (1): Identity()
          (2): ReLU()
        )
    """
    if any(m.training for m in model.modules()):
        raise NormError("folding is only valid in evaluation mode: call model.eval() first")
    folded = copy.deepcopy(model)
    for module in folded.modules():
        if isinstance(module, nn.Sequential):
            _fold_sequential(module)
    return folded
