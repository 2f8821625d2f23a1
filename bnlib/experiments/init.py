"""Weight initialization suited to the activation that follows each layer.

A layer's weights should keep the variance of the signal (and of the gradient) from layer
to layer. Glorot & Bengio (2010) derive :math:`\\operatorname{Var}(W) =
2 / (\\text{fan\\_in} + \\text{fan\\_out})` for a unit-slope activation; an activation with
slope :math:`s` at 0 needs the gain :math:`1/s`. The sigmoid's slope at 0 is 1/4, so its
gain is 4 (``torch.nn.init.calculate_gain("sigmoid")`` returns 1, which is not this gain);
tanh's slope is 1, and PyTorch's gain 5/3 also makes up for its saturation. He et al. (2015)
derive :math:`\\operatorname{Var}(W) = 2 / \\text{fan\\_in}` for ReLU.

The normal draws are made in float64 and rounded to the weights' dtype (:func:`normal_`):
torch's float32 ``normal_`` has a vectorized AVX2 kernel and a scalar one that round
differently, so ``nn.init.xavier_normal_`` gives other last bits on a CPU without AVX2, and a
few hundred training steps turn those bits into a different test accuracy.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GAINS", "init_for_activation", "normal_", "same_bits_default_"]

#: Xavier-normal gain per activation (``relu`` uses Kaiming normal instead).
GAINS: dict[str, float] = {"sigmoid": 4.0, "tanh": 5.0 / 3.0, "linear": 1.0}

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Fill ``tensor`` in place with :math:`\\mathcal{N}(0, \\text{std}^2)` draws, the same bits
    on every CPU, and return it.

    The draws are made in float64 (one scalar kernel on every CPU) from torch's global
    generator, consuming it as ``tensor.normal_`` would, then rounded to ``tensor``'s dtype.

    Args:
        tensor: the tensor to fill (e.g. a layer's weight).
        std: the standard deviation; must be positive.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> w = normal_(torch.empty(400, 400), std=0.05)
        >>> w.dtype, round(float(w.std()), 3)
        (torch.float32, 0.05)
    """
    if not std > 0:
        raise ValueError(f"expected std > 0 (got {std})")
    with torch.no_grad():
        draws = torch.empty(tensor.shape, dtype=torch.float64).normal_(0.0, std)
        return tensor.copy_(draws)


def same_bits_default_(model: nn.Module) -> nn.Module:
    """Give every ``nn.Linear`` of ``model`` PyTorch's default initialization again, drawn
    so that every CPU gets the same bits, and return ``model``.

    PyTorch initializes a ``Linear`` layer's weight and bias from
    :math:`\\mathcal{U}(-1/\\sqrt{n_i},\\ 1/\\sqrt{n_i})` (:math:`n_i` = fan-in), but its
    ``uniform_(a, b)`` rounds differently in its AVX2 and its baseline kernels when the
    bound is not exact (fan-in 100, say). Here the draws are ``U(0, 1)`` in float64 from
    torch's global generator, mapped to the interval and rounded to the layer's dtype.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> layer = same_bits_default_(nn.Linear(100, 3)).weight
        >>> bool(layer.abs().max() <= 0.1)
        True
    """
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                bound = 1 / math.sqrt(layer.in_features)
                for p in (layer.weight, layer.bias):
                    if p is not None:
                        u = torch.rand(p.shape, dtype=torch.float64)
                        p.copy_((2 * u - 1) * bound)
    return model


def _xavier_normal_(weight: torch.Tensor, gain: float) -> torch.Tensor:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    return normal_(weight, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def _kaiming_normal_relu_(weight: torch.Tensor) -> torch.Tensor:
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    return normal_(weight, math.sqrt(2.0 / fan_in))


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, _NORM_TYPES):
        return True
    # bnlib.torch's layers are written from tensor operations: recognise them by module path.
    return type(module).__module__.startswith("bnlib.torch") and hasattr(module, "weight")


def init_for_activation(model: nn.Module, activation: str) -> nn.Module:
    """Initialize ``model`` in place for ``activation`` and return it.

    Every ``Linear``/``Conv`` layer but the last gets, with :math:`n_i` = fan-in and
    :math:`n_o` = fan-out:

    - ``"sigmoid"``: :math:`W \\sim \\mathcal{N}(0,\\ 4^2 \\cdot 2 / (n_i + n_o))` (Xavier normal, gain 4);
    - ``"tanh"``: Xavier normal with gain 5/3; ``"linear"``: gain 1;
    - ``"relu"``: :math:`W \\sim \\mathcal{N}(0,\\ 2 / n_i)` (Kaiming normal, fan-in).

    The last ``Linear``/``Conv`` layer (the classifier) gets Xavier normal with gain 1; all
    biases are set to 0; normalization layers get weight 1 and bias 0. ``"default"`` leaves
    the model as PyTorch built it (Kaiming-uniform with ``a = sqrt(5)``, i.e.
    :math:`W \\sim \\mathcal{U}(\\pm 1/\\sqrt{n_i})`), for experiments about that default.
    Draws use torch's global generator (:func:`~bnlib.experiments.init.normal_`, the same bits on every CPU): seed it
    (``torch.manual_seed``) first.

    Args:
        model: the network.
        activation: ``"sigmoid"``, ``"tanh"``, ``"relu"``, ``"linear"`` or ``"default"``.

    Returns:
        ``model``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> net = init_for_activation(nn.Sequential(nn.Linear(400, 400), nn.Sigmoid(),
        ...                                         nn.Linear(400, 10)), "sigmoid")
        >>> round(float(net[0].weight.detach().std()), 2)  # 4 * sqrt(2 / 800)
        0.2
    """
    if activation != "relu" and activation not in GAINS and activation != "default":
        raise ValueError(f"expected activation in {sorted([*GAINS, 'relu', 'default'])} "
                         f"(got {activation!r})")
    if activation == "default":
        return model
    weighted = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    for i, layer in enumerate(weighted):
        if i == len(weighted) - 1:
            _xavier_normal_(layer.weight, gain=1.0)
        elif activation == "relu":
            _kaiming_normal_relu_(layer.weight)
        else:
            _xavier_normal_(layer.weight, gain=GAINS[activation])
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    for module in model.modules():
        if _is_norm(module):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    return model


