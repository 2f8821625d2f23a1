r"""Experiment 6 and the vision comparison of chapter 5: the small CNN on the 8x8 digits,
trained with and without ``BatchNorm2d`` over several seeds for a fixed budget.

Each seed sets both the weight initialization and the batch order; the train/test split is
the same for every run, so the spread across seeds is the spread of training itself.
The generalization gap is measured in evaluation mode (running statistics) at the end of
the budget, as a gap in accuracy and as a gap in cross-entropy:

.. math::

    \text{gap}_{\text{acc}} = \text{acc}_{\text{train}} - \text{acc}_{\text{test}},
    \qquad
    \text{gap}_{\text{loss}} = L_{\text{test}} - L_{\text{train}}.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Split
from .models import small_cnn
from .train import History, accuracy, train

__all__ = ["Gap", "SeedRun", "measure_gap", "run_cnn_seeds", "stack", "mean_std"]


@dataclass(frozen=True)
class Gap:
    """Train and test accuracy and cross-entropy of a trained model, in evaluation mode.

    Attributes:
        train_accuracy, test_accuracy: in [0, 1].
        train_loss, test_loss: mean cross-entropy in nats.
    """

    train_accuracy: float
    test_accuracy: float
    train_loss: float
    test_loss: float

    @property
    def accuracy_gap(self) -> float:
        """``train_accuracy - test_accuracy``: positive when the model fits the training set
        better than it generalizes."""
        return self.train_accuracy - self.test_accuracy

    @property
    def loss_gap(self) -> float:
        """``test_loss - train_loss`` in nats."""
        return self.test_loss - self.train_loss


@dataclass(frozen=True)
class SeedRun:
    """One training run: its norm, seed, the history of evaluations and the final gap."""

    norm: str
    seed: int
    history: History
    gap: Gap


@torch.no_grad()
def _mean_cross_entropy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    was_training = model.training
    model.eval()
    loss = F.cross_entropy(model(x), y).item()
    model.train(was_training)
    return loss


def measure_gap(model: nn.Module, split: Split) -> Gap:
    """Accuracy and cross-entropy on the training and the test set, in evaluation mode
    (the model's mode is restored after).

    Example:
        >>> from bnlib.experiments import load_digits_split
        >>> split = load_digits_split(images=True)
        >>> gap = measure_gap(small_cnn(channels=4), split)
        >>> 0.0 <= gap.train_accuracy <= 1.0
        True
    """
    return Gap(train_accuracy=accuracy(model, split.x_train, split.y_train),
               test_accuracy=accuracy(model, split.x_test, split.y_test),
               train_loss=_mean_cross_entropy(model, split.x_train, split.y_train),
               test_loss=_mean_cross_entropy(model, split.x_test, split.y_test))


def run_cnn_seeds(split: Split, norms: Sequence[str] = ("none", "batch"),
                  seeds: Sequence[int] = (0, 1, 2), steps: int = 300, channels: int = 8,
                  lr: float = 0.1, momentum: float = 0.9, batch_size: int = 60,
                  eval_every: int = 25) -> dict[str, list[SeedRun]]:
    """Train :func:`~bnlib.experiments.small_cnn` once per norm and seed for ``steps`` SGD
    updates, recording test accuracy against steps and the final generalization gap.

    Every norm gets the same hyperparameters, the same seeds (``torch.manual_seed(seed)``
    before building the model, ``seed`` for the batch order) and the same budget.

    Args:
        split: image data, ``load_digits_split(images=True)``.
        norms: names understood by :func:`~bnlib.experiments.make_norm`.
            Default: ``("none", "batch")``.
        seeds: one run per seed. Default: ``(0, 1, 2)``.
        steps: SGD updates per run (the fixed budget). Default: ``300``.
        channels: width ``C`` of the CNN. Default: ``8``.
        lr: learning rate. Default: ``0.1``.
        momentum: SGD momentum. Default: ``0.9``.
        batch_size: samples per update. Default: ``60``.
        eval_every: steps between evaluations. Default: ``25``.

    Returns:
        ``{norm: [SeedRun per seed]}``.

    Shape:
        ``split.x_train``: ``(N, 1, 8, 8)``.

    Example:
        >>> from bnlib.experiments import load_digits_split
        >>> runs = run_cnn_seeds(load_digits_split(images=True), seeds=(0,), steps=20,
        ...                      eval_every=10)
        >>> sorted(runs), runs["batch"][0].history.steps
        (['batch', 'none'], [0, 10, 20])
    """
    if split.x_train.dim() != 4:
        raise ValueError(f"expected 4D input (got {split.x_train.dim()}D input): "
                         "load the data with load_digits_split(images=True)")
    if len(seeds) == 0:
        raise ValueError("expected at least one seed (got none)")
    runs: dict[str, list[SeedRun]] = {}
    for norm in norms:
        runs[norm] = []
        for seed in seeds:
            torch.manual_seed(seed)
            model = small_cnn(norm, channels=channels)
            history = train(model, split, steps=steps, batch_size=batch_size, lr=lr,
                            seed=seed, momentum=momentum, eval_every=eval_every)
            runs[norm].append(SeedRun(norm, seed, history, measure_gap(model, split)))
    return runs


def stack(runs: Sequence[SeedRun], metric: str = "test_accuracy") -> tuple[np.ndarray, np.ndarray]:
    """The evaluation steps and one :class:`~bnlib.experiments.History` metric of every run,
    stacked for plotting mean and spread.

    Args:
        runs: runs of the same length (same ``steps`` and ``eval_every``).
        metric: ``"test_accuracy"``, ``"train_accuracy"`` or ``"train_loss"``.
            Default: ``"test_accuracy"``.

    Returns:
        ``steps`` of shape ``(E,)`` and values of shape ``(S, E)`` for ``S`` runs.
    """
    if metric not in ("test_accuracy", "train_accuracy", "train_loss"):
        raise ValueError(f"expected metric 'test_accuracy', 'train_accuracy' or 'train_loss' "
                         f"(got {metric!r})")
    steps = runs[0].history.steps
    if any(r.history.steps != steps for r in runs):
        raise ValueError("expected runs evaluated at the same steps (got different steps); "
                         "did some run diverge?")
    values = np.array([getattr(r.history, metric) for r in runs])  # (S, E)
    return np.array(steps), values


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value) across seeds."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0
