"""Per-layer statistics of a deep MLP: what depth does to signals and gradients, with and
without batch normalization.

One forward and one backward pass on a batch of digits, with forward hooks on the
nonlinearities, give for every hidden layer ``l``: the nonlinearity's input ``z_l`` (the
pre-activation), its output ``a_l``, the fraction of saturated units and the norm of the
loss gradient with respect to that layer's weight matrix ``W_l``. Vanishing gradients show as
``||dL/dW_1||`` many orders of magnitude below ``||dL/dW_L||``; saturation shows as units whose
local derivative ``f'(z)`` is a small fraction of its maximum ``f'(0)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Split, load_digits_split
from .init import init_for_activation, normal_
from .models import ACTIVATIONS, make_norm, mlp
from .train import train

__all__ = ["CentredSigmoid", "LayerStats", "ResidualBlock", "derivative_ratio",
           "saturated_fraction", "init_normal_", "residual_mlp", "layer_stats", "depth_stats",
           "geometric_interval"]


class CentredSigmoid(nn.Module):
    """The logistic sigmoid shifted to zero mean at zero input: :math:`\\sigma(z) - 1/2`.

    Same slope as the sigmoid everywhere (at most 1/4, at :math:`z = 0`), but its output
    is centred, as tanh's is (:math:`\\sigma(z) - 1/2 = \\tanh(z/2)/2`). A control for
    Glorot and Bengio's point that the sigmoid's non-zero mean output hurts deep networks.

    Shape:
        Input: any; output: the same.

    Example:
        >>> CentredSigmoid()(torch.tensor([0.0, 100.0])).tolist()
        [0.0, 0.5]
    """

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z) - 0.5


_ACTIVATION_TYPES = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu",
                     CentredSigmoid: "sigmoid"}


def derivative_ratio(z: Tensor, activation: str) -> Tensor:
    """The local derivative of the nonlinearity relative to its maximum, ``f'(z) / f'(0)``.

    .. math::
        \\text{sigmoid: } 4\\,\\sigma(z)(1 - \\sigma(z)), \\qquad
        \\text{tanh: } 1 - \\tanh^2(z), \\qquad
        \\text{relu: } \\mathbb{1}[z > 0].

    Args:
        z: pre-activations, any shape.
        activation: ``"sigmoid"``, ``"tanh"`` or ``"relu"``.

    Shape:
        Output has the shape of ``z``, values in [0, 1].

    Example:
        >>> z = torch.tensor([0.0, 3.0])
        >>> [round(float(r), 4) for r in derivative_ratio(z, "tanh")]
        [1.0, 0.0099]
    """
    if activation == "sigmoid":
        s = torch.sigmoid(z)
        return 4.0 * s * (1.0 - s)
    if activation == "tanh":
        return 1.0 - torch.tanh(z) ** 2
    if activation == "relu":
        return (z > 0).to(z.dtype)
    raise ValueError(f"expected activation in {sorted(ACTIVATIONS)} (got {activation!r})")


def saturated_fraction(z: Tensor, activation: str, threshold: float = 0.02) -> float:
    """Share of pre-activations at which the unit is saturated: ``f'(z) / f'(0) < threshold``.

    With the default 2 %, a tanh unit is saturated where ``|tanh(z)| > 0.99`` and a sigmoid
    unit where its output is below 0.005 or above 0.995; such a unit passes back less than
    2 % of the gradient it would pass at ``z = 0``.

    Args:
        z: pre-activations, any shape.
        activation: ``"sigmoid"``, ``"tanh"`` or ``"relu"``.
        threshold: the derivative ratio below which a unit counts as saturated. Default: ``0.02``.

    Example:
        >>> saturated_fraction(torch.tensor([0.0, 1.0, 10.0, -10.0]), "tanh")
        0.5
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"expected 0 < threshold < 1 (got {threshold})")
    return float((derivative_ratio(z, activation) < threshold).float().mean())


def init_normal_(model: nn.Module, gain: float) -> nn.Module:
    """Re-initialize every ``nn.Linear`` in place with ``W ~ N(0, gain^2 / fan_in)`` and zero bias.

    ``gain = 1`` keeps the variance of a linear layer's output equal to that of its input
    (LeCun's scaling; for equal widths also Glorot & Bengio's); larger gains push tanh and
    sigmoid units into saturation. Draws from torch's global generator (in float64, the same
    bits on every CPU: :func:`bnlib.experiments.init.normal_`): seed it first.

    Args:
        model: any module; only its ``nn.Linear`` layers change.
        gain: the standard deviation of the weights times ``sqrt(fan_in)``; must be positive.

    Returns:
        ``model``, for chaining.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> w = init_normal_(nn.Linear(400, 3), gain=2.0).weight
        >>> round(float(w.detach().std() * 20), 1)
        2.0
    """
    if not gain > 0:
        raise ValueError(f"expected gain > 0 (got {gain})")
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                normal_(layer.weight, gain / math.sqrt(layer.in_features))
                if layer.bias is not None:
                    layer.bias.zero_()
    return model


class ResidualBlock(nn.Module):
    """``h -> h + f(norm(W h))``: a hidden layer with an identity shortcut (He et al., 2016).

    Args:
        width: units in and out.
        activation: ``"sigmoid"``, ``"tanh"`` or ``"relu"``.
        norm: a :func:`~bnlib.experiments.make_norm` name; the Linear has no bias when a norm
            follows it. Default: ``"batch"``.

    Shape:
        ``(N, width) -> (N, width)``.
    """

    def __init__(self, width: int, activation: str, norm: str = "batch"):
        super().__init__()
        norm_layer = make_norm(norm, width)
        self.linear = nn.Linear(width, width, bias=norm_layer is None)
        self.norm = norm_layer if norm_layer is not None else nn.Identity()
        self.act = ACTIVATIONS[activation]()

    def forward(self, h: Tensor) -> Tensor:
        return h + self.act(self.norm(self.linear(h)))  # (N, width)


def residual_mlp(in_features: int = 64, hidden: int = 100, depth: int = 10,
                 num_classes: int = 10, activation: str = "relu", norm: str = "batch"
                 ) -> nn.Sequential:
    """:func:`~bnlib.experiments.mlp` with identity shortcuts around hidden layers 2 to ``depth``.

    Layer 1 maps the inputs to ``hidden`` units (``Linear -> [norm] -> f``), each later layer
    is a :class:`ResidualBlock`, then a Linear classifier, so the network has the same
    Linear layers, norms and nonlinearities as ``mlp`` and only the shortcuts differ.

    Example:
        >>> net = residual_mlp(depth=3)
        >>> linears = sum(isinstance(m, nn.Linear) for m in net.modules())
        >>> net(torch.zeros(4, 64)).shape, linears
        (torch.Size([4, 10]), 4)
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"expected activation in {sorted(ACTIVATIONS)} (got {activation!r})")
    first = mlp(in_features, hidden, depth=1, activation=activation, norm=norm,
                init="default")[:-1]
    blocks = [ResidualBlock(hidden, activation, norm) for _ in range(depth - 1)]
    return nn.Sequential(*first, *blocks, nn.Linear(hidden, num_classes))


@dataclass
class LayerStats:
    """What :func:`layer_stats` measures, one entry per hidden layer (input side first).

    Attributes:
        activation: the nonlinearity's name.
        pre_activation: ``depth`` tensors ``(N, width)``, the inputs ``z_l`` of the nonlinearities
            (for a BN net, the BN outputs).
        post_activation: ``depth`` tensors ``(N, width)``, the outputs ``a_l = f(z_l)``.
        weight_grad_norm: ``(depth,)`` Frobenius norms of ``dL/dW_l`` of the hidden Linear layers.
    """

    activation: str
    pre_activation: list[Tensor]
    post_activation: list[Tensor]
    weight_grad_norm: np.ndarray

    @property
    def depth(self) -> int:
        return len(self.pre_activation)

    def saturated_fraction(self, threshold: float = 0.02) -> np.ndarray:
        """``(depth,)`` saturated share of each layer's units over the batch."""
        return np.array([saturated_fraction(z, self.activation, threshold)
                         for z in self.pre_activation])

    def post_activation_std(self) -> np.ndarray:
        """``(depth,)`` how much each layer's output depends on the input: the standard
        deviation over the batch of every unit's output, averaged over the units."""
        return np.array([float(a.std(dim=0).mean()) for a in self.post_activation])

    @property
    def gradient_ratio(self) -> float:
        """``||dL/dW_1|| / ||dL/dW_depth||``: far below 1 when gradients vanish towards the
        input, far above 1 when they explode."""
        return float(self.weight_grad_norm[0] / self.weight_grad_norm[-1])


def layer_stats(model: nn.Sequential, x: Tensor, y: Tensor) -> LayerStats:
    """One forward and backward pass of ``model`` on ``(x, y)``, recording every hidden layer.

    The pass runs in training mode (batch statistics, as during training). The model is left
    as it was: its ``.grad`` fields are not touched (gradients come from
    ``torch.autograd.grad``) and BN running statistics are restored after the pass.

    Args:
        model: an :func:`~bnlib.experiments.mlp` or :func:`residual_mlp`: hidden layers
            ``Linear -> [norm] -> f`` (registered in forward order), then a Linear classifier.
        x: ``(N, in_features)`` inputs.
        y: ``(N,)`` labels.

    Returns:
        A :class:`LayerStats`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> split = load_digits_split()
        >>> net = mlp(depth=10, init="default")
        >>> stats = layer_stats(net, split.x_train[:500], split.y_train[:500])
        >>> stats.depth, stats.gradient_ratio < 1e-6
        (10, True)
    """
    acts = [(m, _ACTIVATION_TYPES[type(m)]) for m in model.modules()
            if type(m) in _ACTIVATION_TYPES]
    if not acts:
        raise ValueError("expected a model with sigmoid, tanh or relu layers (got none)")
    names = {name for _, name in acts}
    if len(names) != 1:
        raise ValueError(f"expected one kind of nonlinearity (got {sorted(names)})")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)][:-1]  # hidden only
    if len(linears) != len(acts):
        raise ValueError(f"expected one Linear per nonlinearity before the classifier "
                         f"(got {len(linears)} Linear and {len(acts)} nonlinearities)")
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    pre: list[Tensor] = []
    post: list[Tensor] = []

    def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        pre.append(inputs[0].detach())  # (N, width)
        post.append(output.detach())  # (N, width)

    hooks = [m.register_forward_hook(record) for m, _ in acts]
    was_training = model.training
    try:
        model.train()
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [lin.weight for lin in linears])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    norms = np.array([float(g.norm()) for g in grads])  # (depth,)
    return LayerStats(acts[0][1], pre, post, norms)


def depth_stats(activation: str = "sigmoid", norm: str = "none", depth: int = 10,
                width: int = 100, init_gain: float | None = None, steps: int = 0,
                lr: float = 0.1, seed: int = 0, num_samples: int = 500,
                split: Split | None = None, residual: bool = False,
                init: str = "default") -> LayerStats:
    """Build a seeded deep MLP, optionally train it a few steps, and measure its layers.

    Args:
        activation: ``"sigmoid"``, ``"tanh"``, ``"relu"`` or ``"centred_sigmoid"``
            (:class:`CentredSigmoid`, initialized as the sigmoid). Default: ``"sigmoid"``.
        norm: ``"none"`` or ``"batch"`` (or any name :func:`~bnlib.experiments.make_norm`
            knows). Default: ``"none"``.
        depth: number of hidden layers. Default: ``10``.
        width: units per hidden layer. Default: ``100``.
        init_gain: ``None`` keeps the initialization ``init`` names; a number
            re-initializes with :func:`init_normal_`. Default: ``None``.
        steps: SGD steps (batch 60) before measuring; ``0`` measures at initialization.
            Default: ``0``.
        lr: learning rate of those steps. Default: ``0.1``.
        seed: seeds the initialization and the batch order. Default: ``0``.
        num_samples: the first ``num_samples`` training samples form the measured batch.
            Default: ``500``.
        split: the data; ``None`` loads :func:`~bnlib.experiments.load_digits_split` (unit scale).
        residual: build :func:`residual_mlp` (identity shortcuts) instead of
            :func:`~bnlib.experiments.mlp`. Default: ``False``.
        init: ``"default"`` keeps PyTorch's default Linear initialization
            (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, i.e. gain ``1/sqrt(3)``); ``"auto"``
            applies :func:`~bnlib.experiments.init.init_for_activation` (Xavier normal with
            gain 4 for sigmoid, 5/3 for tanh, Kaiming normal for ReLU). Default: ``"default"``.

    Example:
        >>> stats = depth_stats(norm="batch")
        >>> 0.3 < stats.gradient_ratio < 3
        True
    """
    split = load_digits_split() if split is None else split
    centred = activation == "centred_sigmoid"
    if centred:
        activation = "sigmoid"
    torch.manual_seed(seed)
    kwargs = dict(in_features=split.num_features, hidden=width, depth=depth,
                  activation=activation, norm=norm)
    model = residual_mlp(**kwargs) if residual else mlp(**kwargs, init="default")
    if centred:
        for parent in list(model.modules()):
            for name, child in parent.named_children():
                if isinstance(child, nn.Sigmoid):
                    setattr(parent, name, CentredSigmoid())
    if init == "auto":
        init_for_activation(model, activation)
    elif init != "default":
        raise ValueError(f"expected init 'default' or 'auto' (got {init!r})")
    if init_gain is not None:
        init_normal_(model, init_gain)
    if steps > 0:
        train(model, split, steps=steps, lr=lr, seed=seed, eval_every=steps)
    return layer_stats(model, split.x_train[:num_samples], split.y_train[:num_samples])


def geometric_interval(values, level: float = 0.95):
    """The geometric mean of positive per-seed values (gradient ratios, which vary by
    factors, not by amounts) with the Student-t interval of their logarithms, exponentiated:
    :func:`~bnlib.experiments.protocol.ratio_interval` of ``values`` against 1.

    .. math::
        \\exp\\Big(\\overline{\\log v} \\pm t_{(1+\\text{level})/2,\\,n-1}\\,
        s_{\\log v} / \\sqrt{n}\\Big)

    Args:
        values: one positive value per seed, at least 2.
        level: confidence level. Default: ``0.95``.

    Returns:
        An :class:`~bnlib.experiments.protocol.Interval` (``mean``: the geometric mean).

    Example:
        >>> g = geometric_interval([10.0, 1000.0])
        >>> round(g.mean, 6), g.low < 10.0 and g.high > 1000.0
        (100.0, True)
    """
    from .protocol import ratio_interval

    values = np.asarray(values, dtype=np.float64)
    return ratio_interval(values, np.ones_like(values), level)
