"""A seeded mini-batch training loop that records what the experiments plot.

The loop evaluates on the validation split during training (every choice is made there)
and on the test split once, at the end, for the reported number.
"""
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
        val_accuracy: accuracy on the validation set in evaluation mode, in [0, 1]
            (empty when the split has no validation set).
        test_accuracy: accuracy on the test set in evaluation mode after the last step,
            evaluated once; ``0.0`` when training diverged; ``None`` when :func:`train` was
            told not to touch the test set.
        diverged: the loss became NaN or infinite and training stopped.
        eval_every: steps between evaluations (the resolution of :meth:`steps_to`).
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    test_accuracy: float | None = None
    diverged: bool = False
    eval_every: int = 50

    def steps_to(self, target: float, metric: str = "val_accuracy") -> int | None:
        """The first evaluated step at which ``metric`` (``"val_accuracy"`` or
        ``"train_accuracy"``) is at least ``target``, else ``None``. The answer is exact
        only to ``eval_every`` steps: :func:`bnlib.experiments.protocol.steps_to_target`
        checks that resolution."""
        if metric not in ("val_accuracy", "train_accuracy"):
            raise ValueError(f"expected metric 'val_accuracy' or 'train_accuracy' (got {metric!r})")
        curve = getattr(self, metric)
        return next((s for s, a in zip(self.steps, curve) if a >= target), None)

    @property
    def final_test_accuracy(self) -> float:
        """``test_accuracy`` as a number (``0.0`` for a diverged run)."""
        if self.test_accuracy is None:
            raise ValueError("this run did not evaluate the test set (train(..., test=False))")
        return 0.0 if self.diverged else self.test_accuracy

    @property
    def final_val_accuracy(self) -> float:
        """The last validation accuracy (``0.0`` for a diverged run)."""
        if not self.val_accuracy:
            raise ValueError("this run has no validation accuracy (the split has no x_val)")
        return 0.0 if self.diverged else self.val_accuracy[-1]


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


def _optimizer(name: str, params, lr: float, momentum: float, weight_decay: float
               ) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        if momentum:
            raise ValueError("momentum is an SGD option; Adam has betas (got momentum="
                             f"{momentum} with optimizer='adam')")
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"expected optimizer 'sgd' or 'adam' (got {name!r})")


def train(model: nn.Module, split: Split, steps: int, batch_size: int = 60, lr: float = 0.1,
          seed: int = 0, momentum: float = 0.0, weight_decay: float = 0.0,
          eval_every: int = 50, on_step: Callable[[int, nn.Module], None] | None = None,
          optimizer: str = "sgd", test: bool = True, train_accuracy: bool = True
          ) -> History:
    """Train ``model`` on cross-entropy for ``steps`` mini-batches.

    Batches are drawn with a generator seeded by ``seed``; seed the model's initialization
    yourself (``torch.manual_seed``) before building it. Every ``eval_every`` steps (and
    at step 0 and the last step) the model is evaluated on the training and validation
    sets; the test set is evaluated once, after the last step. ``on_step(step, model)`` is
    called after every update (e.g. to record activations). Training stops early, with
    ``diverged=True``, when the loss stops being finite.

    Args:
        model: a classifier returning logits ``(N, 10)``.
        split: the data.
        steps: number of updates.
        batch_size: samples per update. Default: ``60`` (Ioffe & Szegedy's MNIST setting).
        lr: learning rate. Default: ``0.1``.
        seed: seed of the batch order. Default: ``0``.
        momentum, weight_decay: SGD options (weight decay also for Adam). Default: ``0``.
        eval_every: steps between evaluations. Default: ``50``.
        on_step: optional callback after each update. Default: ``None``.
        optimizer: ``"sgd"`` or ``"adam"``. Default: ``"sgd"``.
        test: evaluate the test set after the last step; ``False`` leaves
            ``test_accuracy = None`` (for runs that only make choices). Default: ``True``.
        train_accuracy: record the training accuracy at each evaluation. Default: ``True``.

    Returns:
        A :class:`History`.

    Example:
        >>> import torch
        >>> from bnlib.experiments import load_digits_split, mlp
        >>> _ = torch.manual_seed(0)
        >>> h = train(mlp(norm="batch"), load_digits_split(), steps=20, eval_every=10)
        >>> h.steps, type(h.test_accuracy).__name__
        ([0, 10, 20], 'float')
    """
    if steps < 1 or eval_every < 1:
        raise ValueError(f"expected steps >= 1 and eval_every >= 1 (got {steps}, {eval_every})")
    generator = torch.Generator().manual_seed(seed)
    opt = _optimizer(optimizer, model.parameters(), lr, momentum, weight_decay)
    history = History(eval_every=eval_every)
    stream = batches(split.x_train, split.y_train, batch_size, generator)
    losses: list[float] = []

    def evaluate(step: int) -> None:
        history.steps.append(step)
        mean_loss = sum(losses) / len(losses) if losses else float("nan")
        history.train_loss.append(mean_loss)
        if train_accuracy:
            acc = accuracy(model, split.x_train, split.y_train)
            history.train_accuracy.append(acc)
        if split.x_val is not None:
            history.val_accuracy.append(accuracy(model, split.x_val, split.y_val))
        losses.clear()

    model.train()
    evaluate(0)
    for step in range(1, steps + 1):
        x, y = next(stream)
        loss = F.cross_entropy(model(x), y)
        if not math.isfinite(loss.item()):
            history.diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, model)
        if step % eval_every == 0 or step == steps:
            evaluate(step)
    if test:
        history.test_accuracy = (0.0 if history.diverged
                                 else accuracy(model, split.x_test, split.y_test))
    return history
