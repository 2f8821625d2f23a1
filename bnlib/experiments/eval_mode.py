"""Rule 2 of chapter 4: ``model.eval()`` at inference.

In training mode batch norm normalizes with the statistics of the current batch, so a
sample's prediction depends on the other samples in its batch; in evaluation mode it uses the
running statistics and depends on the sample alone.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CompanionEffect", "companion_effect", "train_mode_accuracy"]


@dataclass(frozen=True)
class CompanionEffect:
    """One sample's class probabilities in ``num_batches`` batches of random companions.

    Attributes:
        train_probs: ``(num_batches, num_classes)`` in training mode (batch statistics).
        eval_probs: ``(num_batches, num_classes)`` in evaluation mode (running statistics).
    """

    train_probs: Tensor
    eval_probs: Tensor

    @property
    def train_predictions(self) -> Tensor:
        """``(num_batches,)`` predicted classes in training mode."""
        return self.train_probs.argmax(dim=1)

    @property
    def eval_predictions(self) -> Tensor:
        """``(num_batches,)`` predicted classes in evaluation mode."""
        return self.eval_probs.argmax(dim=1)


@torch.no_grad()
def companion_effect(model: nn.Module, sample: Tensor, pool: Tensor, num_batches: int = 20,
                     batch_size: int = 8, seed: int = 0) -> CompanionEffect:
    """Classify ``sample`` inside ``num_batches`` batches whose other ``batch_size - 1``
    members are drawn at random from ``pool``, in training and in evaluation mode.

    The model is copied first, so its running statistics are not changed, and the
    evaluation-mode copy never sees a training-mode pass.

    Args:
        model: a classifier with batch norm.
        sample: ``(F,)`` one input.
        pool: ``(P, F)`` inputs to draw companions from.
        num_batches: number of different batches. Default: ``20``.
        batch_size: size of each batch, the sample included. Default: ``8``.
        seed: seed of the companion draws. Default: ``0``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        >>> e = companion_effect(net, torch.randn(3), torch.randn(20, 3),
        ...                      num_batches=4)
        >>> tuple(e.train_probs.shape), bool((e.eval_probs == e.eval_probs[0]).all())
        ((4, 2), True)
    """
    # Two copies: training-mode passes update the running statistics of theirs only.
    train_model, eval_model = copy.deepcopy(model).train(), copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(seed)
    train_probs, eval_probs = [], []
    for _ in range(num_batches):
        idx = torch.randperm(len(pool), generator=g)[:batch_size - 1]
        batch = torch.cat([sample.unsqueeze(0), pool[idx]])  # (batch_size, F)
        train_probs.append(F.softmax(train_model(batch)[0], dim=0))  # (num_classes,)
        eval_probs.append(F.softmax(eval_model(batch)[0], dim=0))
    return CompanionEffect(torch.stack(train_probs), torch.stack(eval_probs))


@torch.no_grad()
def train_mode_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 8,
                        seed: int = 0) -> float:
    """Accuracy when ``model.eval()`` is forgotten: batch norm in training mode, the data
    classified in shuffled batches of ``batch_size``.

    A copy of the model is used, so the caller's running statistics are not touched.

    Args:
        model: a classifier with batch norm.
        x: ``(N, ...)`` inputs; y: ``(N,)`` labels.
        batch_size: samples per forward pass. Default: ``8``.
        seed: seed of the shuffle. Default: ``0``.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        >>> acc = train_mode_accuracy(net, torch.randn(16, 3),
        ...                           torch.zeros(16).long())
        >>> 0.0 <= acc <= 1.0
        True
    """
    net = copy.deepcopy(model).train()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    correct = 0
    for idx in order.split(batch_size):
        if len(idx) < 2:  # training-mode BN refuses a batch of one
            idx = torch.cat([idx, order[:1]])
            correct += int(net(x[idx]).argmax(dim=1)[0] == y[idx[0]])
            continue
        correct += int((net(x[idx]).argmax(dim=1) == y[idx]).sum())
    return correct / len(y)
