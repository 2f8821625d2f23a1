"""How far a model's batch-norm running statistics are from the statistics they estimate."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bnlib.torch.precise import batch_norm_layers

__all__ = ["running_stats_error"]


@torch.no_grad()
def running_stats_error(model: nn.Module, x: Tensor) -> float:
    """The mean relative error of the running statistics against those of ``x``.

    Feeds ``x`` (e.g. the whole training set) through ``model`` in evaluation mode, records
    each batch-norm layer's input :math:`z`, and returns the mean over layers and channels of

    .. math::

        \\frac{|\\hat\\mu - \\mu_z|}{\\sigma_z} + \\left|\\frac{\\hat\\sigma^2}{\\sigma_z^2}
        - 1\\right| ,

    0 when the running statistics :math:`\\hat\\mu, \\hat\\sigma^2` equal the population
    statistics of ``x``. The model's mode is restored afterwards.

    Args:
        model: a network with batch-norm layers (``torch.nn`` or ``bnlib.torch``).
        x: ``(N, ...)`` the inputs whose statistics are the reference.

    Example:
        >>> bn = nn.BatchNorm1d(2, momentum=1.0)
        >>> x = torch.randn(50, 2)
        >>> _ = bn(x)  # momentum 1 stores the statistics of x
        >>> running_stats_error(bn, x) < 1e-6
        True
    """
    layers = batch_norm_layers(model)
    inputs: list[Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
             for m in layers]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    errors = []
    for m, z in zip(layers, inputs):
        mean, var = z.mean(dim=0), z.var(dim=0)  # (C,)
        errors.append((m.running_mean - mean).abs() / var.sqrt()
                      + (m.running_var / var - 1).abs())
    return float(torch.cat(errors).mean())
