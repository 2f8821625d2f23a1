"""A seeded mini-batch training loop that records what the experiments plot."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Split, batches

__all__ = ["History", "accuracy", "train"]


@dataclass
class History:
    """What :func:`train` records at each evaluation.

    Attributes:
        steps: training steps at which the model was evaluated (0 = before training).
        train_loss: mean training loss over the steps since the previous evaluation
            (NaN at step 0, before any step).
        train_accuracy: accuracy on the training set in evaluation mode, in [0, 1].
        test_accuracy: accuracy on the test set in evaluation mode, in [0, 1].
        diverged: the loss became NaN or infinite and training stopped.
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    diverged: bool = False

    def steps_to(self, target: float) -> int | None:
        """The first evaluated step with test accuracy at least ``target``, else ``None``."""
        return next((s for s, a in zip(self.steps, self.test_accuracy) if a >= target), None)

    @property
    def final_test_accuracy(self) -> float:
        return 0.0 if self.diverged else self.test_accuracy[-1]


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int | None = None) -> float:
    """Classification accuracy in evaluation mode (the model's mode is restored after).

    ``batch_size`` splits the data into chunks (``None``: one chunk); in evaluation mode the
    result does not depend on it, which is the point of running statistics.
    """
    was_training = model.training
    model.eval()
    chunks = [(x, y)] if batch_size is None else zip(x.split(batch_size), y.split(batch_size))
    correct = sum(int((model(xb).argmax(dim=1) == yb).sum()) for xb, yb in chunks)
    model.train(was_training)
    return correct / len(y)


def train(model: nn.Module, split: Split, steps: int, batch_size: int = 60, lr: float = 0.1,
          seed: int = 0, momentum: float = 0.0, weight_decay: float = 0.0,
          eval_every: int = 50, on_step: Callable[[int, nn.Module], None] | None = None
          ) -> History:
    """Train ``model`` with SGD on cross-entropy for ``steps`` mini-batches.

    Batches are drawn with a generator seeded by ``seed``; seed the model's initialization
    yourself (``torch.manual_seed``) before building it. ``on_step(step, model)`` is called
    after every update (e.g. to record activations). Training stops early, with
    ``diverged=True``, when the loss stops being finite.

    Args:
        model: a classifier returning logits ``(N, 10)``.
        split: the data.
        steps: number of SGD updates.
        batch_size: samples per update. Default: ``60`` (Ioffe & Szegedy's MNIST setting).
        lr: learning rate. Default: ``0.1``.
        seed: seed of the batch order. Default: ``0``.
        momentum, weight_decay: SGD options. Default: ``0``.
        eval_every: steps between evaluations. Default: ``50``.
        on_step: optional callback after each update.

    Returns:
        A :class:`History`.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    history = History()
    stream = batches(split.x_train, split.y_train, batch_size, generator)
    losses: list[float] = []

    def evaluate(step: int) -> None:
        history.steps.append(step)
        history.train_loss.append(sum(losses) / len(losses) if losses else float("nan"))
        history.train_accuracy.append(accuracy(model, split.x_train, split.y_train))
        history.test_accuracy.append(accuracy(model, split.x_test, split.y_test))
        losses.clear()

    model.train()
    evaluate(0)
    for step in range(1, steps + 1):
        x, y = next(stream)
        loss = F.cross_entropy(model(x), y)
        if not math.isfinite(loss.item()):
            history.diverged = True
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, model)
        if step % eval_every == 0 or step == steps:
            evaluate(step)
    return history
