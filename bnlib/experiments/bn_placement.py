"""Rule 3 of chapter 4: batch norm before or after the activation.

``"before"`` is Ioffe & Szegedy's ``Linear(bias=False) -> BN -> ReLU``; ``"after"`` is
``Linear -> ReLU -> BN``. :func:`placement_arms` gives the two as arms of the shared
protocol (:mod:`bnlib.experiments.protocol`), each with its own learning rate.
"""
from __future__ import annotations

from torch import nn

from .data import Split
from .init import init_for_activation
from .models import ACTIVATIONS, make_norm, mlp
from .precision import cast_like
from .protocol import Arm

__all__ = ["PLACEMENTS", "mlp_with_placement", "placement_arms"]

PLACEMENTS = ("before", "after")


def mlp_with_placement(placement: str, in_features: int = 64, hidden: int = 100,
                       depth: int = 3, num_classes: int = 10, activation: str = "relu",
                       init: str = "auto") -> nn.Sequential:
    """An MLP with batch norm before or after each hidden activation.

    ``"before"``: ``Linear(bias=False) -> BN -> activation`` (Ioffe & Szegedy 2015, the same
    network as :func:`bnlib.experiments.mlp`); ``"after"``: ``Linear -> activation -> BN``.

    Args:
        placement: ``"before"`` or ``"after"``.
        in_features, hidden, depth, num_classes: sizes. Defaults: ``64``, ``100``, ``3``,
            ``10``.
        activation: ``"relu"``, ``"tanh"`` or ``"sigmoid"``. Default: ``"relu"``.
        init: ``"auto"`` (initialized for ``activation``, see
            :func:`~bnlib.experiments.init.init_for_activation`) or ``"default"``
            (PyTorch's). Default: ``"auto"``.

    Shape:
        ``(N, in_features) -> (N, num_classes)``.

    Example:
        >>> [type(m).__name__ for m in mlp_with_placement("after", depth=1)]
        ['Linear', 'ReLU', 'BatchNorm1d', 'Linear']
        >>> mlp_with_placement("after", depth=1)[0].bias is not None  # BN comes later
        True
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"expected placement in {PLACEMENTS} (got {placement!r})")
    if placement == "before":
        return mlp(in_features, hidden, depth, num_classes, activation, norm="batch",
                   init=init)
    if activation not in ACTIVATIONS:
        raise ValueError(f"expected activation in {sorted(ACTIVATIONS)} (got {activation!r})")
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[activation](), make_norm("batch", hidden)]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    model = nn.Sequential(*layers)
    return init_for_activation(model, activation) if init == "auto" else model


def placement_arms(activation: str = "relu", eval_every: int = 50, split: Split | None = None,
                   **mlp_kwargs) -> list[Arm]:
    """The two placements as arms of :func:`bnlib.experiments.protocol.run`, named
    ``"before"`` and ``"after"``, each initialized for ``activation``.

    Args:
        activation: the hidden activation. Default: ``"relu"``.
        eval_every: steps between evaluations. Default: ``50``.
        split: when given, models are built in the dtype of its inputs
            (:func:`~bnlib.experiments.precision.cast_like`; float64 with
            :func:`~bnlib.experiments.precision.double_split`). Default: ``None``
            (PyTorch's default dtype).
        **mlp_kwargs: sizes for :func:`mlp_with_placement`.

    Example:
        >>> [arm.name for arm in placement_arms()]
        ['before', 'after']
    """
    def builder(p: str):
        build = lambda: mlp_with_placement(p, activation=activation, **mlp_kwargs)  # noqa: E731
        return build if split is None else cast_like(build, split)

    return [Arm(p, builder(p), train_kwargs={"eval_every": eval_every}) for p in PLACEMENTS]
