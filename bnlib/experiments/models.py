"""The networks of the experiments, each with a pluggable normalization layer.

The normalization layers come from :mod:`bnlib.torch` where bnlib has them (so the
experiments exercise the book's own code), else from ``torch.nn``.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

import bnlib.torch as bt

from .init import init_for_activation

__all__ = ["NORMS", "make_norm", "mlp", "small_cnn"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


def _group_norm(channels: int, spatial: bool) -> nn.Module:
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    cls = getattr(bt, "GroupNorm", nn.GroupNorm)
    return cls(groups, channels)


def _layer_norm(channels: int, spatial: bool) -> nn.Module:
    # Over (C,) for vectors; over (C, H, W) is GroupNorm with one group for images.
    if spatial:
        return getattr(bt, "GroupNorm", nn.GroupNorm)(1, channels)
    return getattr(bt, "LayerNorm", nn.LayerNorm)(channels)


NORMS: dict[str, Callable[[int, bool], nn.Module] | None] = {
    "none": None,
    "batch": lambda c, spatial: (bt.BatchNorm2d if spatial else bt.BatchNorm1d)(c),
    "group": _group_norm,
    "layer": _layer_norm,
}


def make_norm(norm: str, channels: int, spatial: bool = False) -> nn.Module | None:
    """A normalization layer by name: ``"none"``, ``"batch"``, ``"group"`` or ``"layer"``."""
    if norm not in NORMS:
        raise ValueError(f"expected norm in {sorted(NORMS)} (got {norm!r})")
    factory = NORMS[norm]
    return None if factory is None else factory(channels, spatial)


def _check_init(init: str) -> None:
    if init not in ("auto", "default"):
        raise ValueError(f"expected init 'auto' or 'default' (got {init!r})")


def mlp(in_features: int = 64, hidden: int = 100, depth: int = 3, num_classes: int = 10,
        activation: str = "sigmoid", norm: str = "none", init: str = "auto") -> nn.Sequential:
    """``depth`` hidden layers of ``Linear -> [norm] -> activation``, then a linear classifier.

    As in Ioffe & Szegedy (2015) the normalization sits between the affine map and the
    nonlinearity, and the Linear layer before it has no bias (the norm's shift replaces it).

    Args:
        in_features, hidden, num_classes: layer widths. Default: ``64``, ``100``, ``10``.
        depth: number of hidden layers. Default: ``3``.
        activation: ``"sigmoid"``, ``"tanh"`` or ``"relu"``. Default: ``"sigmoid"``.
        norm: ``"none"``, ``"batch"``, ``"group"`` or ``"layer"``. Default: ``"none"``.
        init: ``"auto"`` initializes for ``activation`` with
            :func:`~bnlib.experiments.init.init_for_activation`; ``"default"`` keeps
            PyTorch's default initialization. Default: ``"auto"``.

    Example:
        >>> " ".join(type(m).__name__ for m in mlp(depth=2, norm="batch"))
        'Linear BatchNorm1d Sigmoid Linear BatchNorm1d Sigmoid Linear'
        >>> mlp(depth=2, norm="batch")[0]  # no bias: BN's shift replaces it
        Linear(in_features=64, out_features=100, bias=False)
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"expected activation in {sorted(ACTIVATIONS)} "
                         f"(got {activation!r})")
    _check_init(init)
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        norm_layer = make_norm(norm, hidden)
        layers.append(nn.Linear(width, hidden, bias=norm_layer is None))
        if norm_layer is not None:
            layers.append(norm_layer)
        layers.append(ACTIVATIONS[activation]())
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    model = nn.Sequential(*layers)
    return init_for_activation(model, activation) if init == "auto" else model


def small_cnn(norm: str = "none", channels: int = 16, num_classes: int = 10,
              init: str = "auto") -> nn.Sequential:
    """A small CNN for 8x8 digits: three 3x3 conv blocks with ReLU, global average pooling,
    a classifier.

    Shapes: ``(N, 1, 8, 8) -> (N, C, 8, 8) -> (N, C, 4, 4) -> (N, 2C, 4, 4) -> (N, 2C)
    -> (N, 10)``.

    Args:
        norm: normalization after each convolution (see :func:`make_norm`). Default: ``"none"``.
        channels: channels ``C`` of the first two blocks. Default: ``16``.
        num_classes: outputs. Default: ``10``.
        init: ``"auto"`` (Kaiming normal for the ReLU blocks, see
            :func:`~bnlib.experiments.init.init_for_activation`) or ``"default"`` (PyTorch's).
            Default: ``"auto"``.
    """
    _check_init(init)

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        norm_layer = make_norm(norm, c_out, spatial=True)
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm_layer is None)
        return [conv] + ([norm_layer] if norm_layer is not None else []) + [nn.ReLU()]

    model = nn.Sequential(
        *block(1, channels),  # (N, C, 8, 8)
        *block(channels, channels), nn.MaxPool2d(2),  # (N, C, 4, 4)
        *block(channels, 2 * channels),  # (N, 2C, 4, 4)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (N, 2C)
        nn.Linear(2 * channels, num_classes))
    return init_for_activation(model, "relu") if init == "auto" else model
