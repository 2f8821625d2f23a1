"""Training mode versus inference mode: what goes wrong when the modes are mixed up, and how
good the running (EMA) statistics are compared with precise population statistics
(:func:`bnlib.experiments.practice.running_stats_error` measures the statistics themselves)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bnlib.torch.precise import batch_norm_layers

__all__ = ["EmaVsPrecise", "batch_stat_accuracy", "ema_vs_precise"]


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

    for layer in batch_norm_layers(model):
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
