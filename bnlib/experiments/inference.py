"""Training mode versus inference mode: what goes wrong when the modes are mixed up, and how
good the running (EMA) statistics are compared with precise population statistics."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["BN_TYPES", "batch_stat_accuracy", "bn_layers", "StatsGap", "running_stats_gap"]

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """Every batch-norm layer of ``model`` (bnlib's or torch's), in module order."""
    from bnlib.torch.batchnorm import _BatchNorm  # bnlib's own base class

    return [m for m in model.modules() if isinstance(m, (_BatchNorm,) + BN_TYPES)]


@torch.no_grad()
def batch_stat_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int,
                        sort_by_label: bool = False) -> float:
    """Accuracy when inference is (wrongly) run in training mode, i.e. with batch statistics.

    The model is deep-copied, so its running statistics are not disturbed (in training mode
    every forward pass would otherwise update them with test data).

    Args:
        model: a classifier containing batch-norm layers.
        x, y: the evaluation data.
        batch_size: size of the chunks the data is fed in; each chunk is normalized by its
            own statistics (a trailing single sample joins the chunk before it).
        sort_by_label: feed the data sorted by class, so each chunk holds few classes (a
            non-i.i.d. stream, e.g. a video or one user's photos).

    Returns:
        Accuracy in [0, 1].
    """
    if batch_size < 2:
        raise ValueError(f"expected batch_size >= 2 (got {batch_size}): in training mode batch "
                         "norm refuses a batch with one value per channel")
    if sort_by_label:
        order = torch.argsort(y, stable=True)
        x, y = x[order], y[order]
    sizes = [batch_size] * (len(x) // batch_size) + ([len(x) % batch_size] if len(x) % batch_size else [])
    if sizes[-1] == 1 and len(sizes) > 1:  # fold a trailing single sample into the chunk before
        sizes[-2:] = [sizes[-2] + 1]
    probe = copy.deepcopy(model).train()
    correct = sum(int((probe(xb).argmax(dim=1) == yb).sum())
                  for xb, yb in zip(x.split(sizes), y.split(sizes)))
    return correct / len(y)


@dataclass
class StatsGap:
    """How far each BN layer's running statistics are from the population statistics of the
    same layer (computed over the whole training set with the final weights).

    Attributes:
        mean_error: per layer, ``max_c |running_mean_c - population_mean_c| / population_std_c``.
        var_ratio: per layer, the median over channels of ``running_var / population_var``.
    """

    mean_error: list[float]
    var_ratio: list[float]


@torch.no_grad()
def running_stats_gap(model: nn.Module, x: Tensor) -> StatsGap:
    """Compare the running statistics of every BN layer with the exact statistics of its input
    over ``x`` (one pass in evaluation mode, the inputs captured with forward hooks)."""
    layers = bn_layers(model)
    captured: dict[int, Tensor] = {}
    hooks = [layer.register_forward_hook(
        lambda mod, inp, out, i=i: captured.__setitem__(i, inp[0].detach()))
        for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    mean_error, var_ratio = [], []
    for i, layer in enumerate(layers):
        inp = captured[i]
        dims = [0] + list(range(2, inp.dim()))
        pop_mean, pop_var = inp.mean(dims), inp.var(dims, unbiased=True)
        mean_error.append(float(((layer.running_mean - pop_mean).abs() / pop_var.sqrt()).max()))
        var_ratio.append(float((layer.running_var / pop_var).median()))
    return StatsGap(mean_error, var_ratio)
