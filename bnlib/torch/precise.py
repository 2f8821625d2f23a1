"""Precise batch-norm statistics: recompute every running mean and variance with the weights fixed.

During training the running statistics are an exponential moving average of batch statistics
taken while the weights were still changing, so they lag behind the final network. Wu &
Johnson (2021, "Rethinking 'Batch' in BatchNorm") call the fix *PreciseBN*: freeze the
weights, run the network over a set of batches in training mode and set each layer's running
statistics to the statistics of all the activations it saw.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

from ._stats import channel_moments, merge_moments
from .batchnorm import _BatchNorm

__all__ = ["batch_norm_layers", "is_batch_norm", "recompute_bn_stats"]


def is_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a batch-norm layer of ``torch.nn`` or of :mod:`bnlib.torch`
    (instance norm, which also has running statistics in torch, is not batch norm)."""
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, _BatchNorm))


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """Every batch-norm layer of ``model`` (``torch.nn``'s or ``bnlib.torch``'s), in module
    order."""
    return [m for m in model.modules() if is_batch_norm(m)]


class _PopulationMoments:
    """Per-channel count, mean and sum of squared deviations of every value seen so far,
    merged batch by batch with Chan et al.'s (1982) pairwise update, in float64."""

    def __init__(self) -> None:
        self.count: Tensor | None = None
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        count_b, mean_b, m2_b = channel_moments(args[0])  # (C,) each, float64
        if self.mean is None:
            self.count, self.mean, self.m2 = count_b, mean_b, m2_b
            return
        self.count, self.mean, self.m2 = merge_moments(self.count, self.mean, self.m2,
                                                       count_b, mean_b, m2_b)


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[Any], population: bool = True) -> None:
    """Replace the running statistics of every batch-norm layer in ``model`` by statistics
    recomputed over ``batches`` with the weights fixed.

    Like :func:`torch.optim.swa_utils.update_bn`, it resets each layer's statistics, sets its
    momentum to ``None`` (a cumulative average), runs every batch through the model in
    training mode (so each layer normalizes with batch statistics, as in training), and
    restores momenta and modes. With ``population=True`` (the default) each layer's statistics
    then become those of *all* the values it saw, pooled over the batches:

    .. math::

        \\mu = \\frac{1}{n} \\sum_{b} \\sum_{i \\in b} x_i, \\qquad
        \\sigma^2 = \\frac{1}{n - 1} \\sum_{b} \\sum_{i \\in b} (x_i - \\mu)^2,

    with ``n`` the number of values per channel over all batches (the running variance is
    unbiased, as in ``torch.nn``), accumulated in float64 with Chan et al.'s merge. With
    ``population=False`` they are the plain average of per-batch statistics, exactly what
    ``update_bn`` computes. The two means agree when all batches have the same size. For
    randomly drawn batches the two variances agree in expectation, the pooled one with less
    noise; when batches are not random (e.g. drawn from data sorted by label) the average of
    per-batch variances misses the spread between the batch means and underestimates the
    variance.

    Args:
        model: the network; its parameters are not changed. Layers with
            ``track_running_stats=False`` are skipped; Batch Renormalization layers are
            treated as batch norm (``r = 1``, ``d = 0`` during the pass).
        batches: an iterable of input tensors, or of tuples/lists whose first element is the
            input (as from a ``DataLoader`` of ``(x, y)`` pairs). It is iterated once.
        population: pooled population statistics (``True``) or the average of batch
            statistics, as ``update_bn`` (``False``). Default: ``True``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        >>> recompute_bn_stats(model, [torch.randn(16, 4) for _ in range(5)])
        >>> int(model[1].num_batches_tracked)
        5
    """
    layers = [m for m in batch_norm_layers(model) if m.track_running_stats]
    if not layers:
        return
    momenta = {bn: bn.momentum for bn in layers}
    # Batch Renormalization layers run as plain BN (r = 1, d = 0) during the pass: their
    # correction would use the very statistics being recomputed.
    bounds = {bn: (bn.r_max, bn.d_max) for bn in layers if hasattr(bn, "r_max")}
    moments = {bn: _PopulationMoments() for bn in layers}
    hooks = [bn.register_forward_pre_hook(moments[bn]) for bn in layers] if population else []
    modes = {m: m.training for m in model.modules()}
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
    for bn in bounds:
        bn.r_max, bn.d_max = 1.0, 0.0
    try:
        model.train()
        for batch in batches:
            model(batch[0] if isinstance(batch, (list, tuple)) else batch)
    finally:
        for hook in hooks:
            hook.remove()
        for bn in layers:
            bn.momentum = momenta[bn]
        for bn, (r_max, d_max) in bounds.items():
            bn.r_max, bn.d_max = r_max, d_max
        for module, mode in modes.items():
            module.training = mode
    if not population:
        return
    for bn in layers:
        stats = moments[bn]
        if stats.mean is None:  # no batch reached this layer
            continue
        bn.running_mean.copy_(stats.mean)
        bn.running_var.copy_(stats.m2 / (stats.count - 1).clamp(min=1))
