"""Training mode versus inference mode: what goes wrong when the modes are mixed up, and how
good the running (EMA) statistics are compared with precise population statistics."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bnlib.torch.precise import is_batch_norm

__all__ = ["EmaVsPrecise", "StatsGap", "batch_stat_accuracy", "bn_layers", "ema_vs_precise",
           "running_stats_gap"]


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """Every batch-norm layer of ``model`` (bnlib's or torch's), in module order."""
    return [m for m in model.modules() if is_batch_norm(m)]


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


@dataclass
class EmaVsPrecise:
    """Test accuracy during training with two sets of inference statistics.

    Attributes:
        steps: the training steps at which both were measured.
        ema_accuracy: with the running (exponential-moving-average) statistics.
        precise_accuracy: with statistics recomputed over the training set with the weights
            of that step (:func:`bnlib.torch.recompute_bn_stats`).
    """

    steps: list[int]
    ema_accuracy: list[float]
    precise_accuracy: list[float]


def ema_vs_precise(model: nn.Module, split, checkpoints: list[int], momentum: float = 0.1,
                   lr: float = 0.5, batch_size: int = 60, seed: int = 0) -> EmaVsPrecise:
    """Train ``model`` and, at each checkpoint step, measure test accuracy with its EMA
    running statistics and with precise statistics (Wu & Johnson 2021), computed on a copy
    over the training set in batches of ``batch_size``; the model's own statistics are
    never touched, so training proceeds exactly as without the measurements."""
    from bnlib.torch.precise import recompute_bn_stats

    from .train import accuracy, train

    for layer in bn_layers(model):
        layer.momentum = momentum
    result = EmaVsPrecise([], [], [])
    x, n = split.x_train, len(split.x_train)
    train_batches = [x[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]

    def measure(step: int, net: nn.Module) -> None:
        if step not in checkpoints:
            return
        result.steps.append(step)
        result.ema_accuracy.append(accuracy(net, split.x_test, split.y_test))
        precise = copy.deepcopy(net)
        recompute_bn_stats(precise, train_batches)
        result.precise_accuracy.append(accuracy(precise, split.x_test, split.y_test))

    train(model, split, steps=max(checkpoints), batch_size=batch_size, lr=lr, seed=seed,
          eval_every=max(checkpoints), on_step=measure)
    return result
