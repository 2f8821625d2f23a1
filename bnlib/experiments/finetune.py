"""Rule 5 of chapter 4: batch-norm statistics when fine-tuning with small batches on
shifted data.

A network with batch norm is pretrained on digits 0-4 with batches of 60 and fine-tuned on
digits 5-9 (new classes, and a shifted input distribution: the statistics every batch-norm
layer sees change) with batches of 2. Three options for the statistics, each an arm of
:func:`bnlib.experiments.protocol.run` with its own learning rate
(``FINETUNE_OPTIONS``):

- ``"updated"``: batch norm in training mode: it normalizes with two-sample statistics and
  its running statistics follow them;
- ``"frozen"``: the pretraining statistics, fixed
  (:class:`~bnlib.experiments.frozen_bn.FrozenStatsBatchNorm`);
- ``"recomputed"``: statistics recomputed on the fine-tuning data with the pretrained
  weights (:func:`bnlib.torch.recompute_bn_stats`), then fixed.
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from bnlib.torch.precise import recompute_bn_stats

from .data import Split
from .frozen_bn import freeze_batch_norm_stats
from .models import mlp
from .precision import cast_like
from .protocol import Arm
from .train import train

__all__ = ["FINETUNE_OPTIONS", "class_subset", "finetune_arms"]

FINETUNE_OPTIONS = ("updated", "frozen", "recomputed")


def class_subset(split: Split, classes: Iterable[int]) -> Split:
    """The samples of ``split`` whose label is in ``classes``, in every part (train,
    validation, test); inputs keep the split's standardization.

    Example:
        >>> from bnlib.experiments import load_digits_split
        >>> sub = class_subset(load_digits_split(), range(5))
        >>> sorted(set(sub.y_train.tolist())), len(sub.y_train)
        ([0, 1, 2, 3, 4], 514)
    """
    keep = torch.tensor(sorted(set(int(c) for c in classes)))

    def part(x, y):
        if x is None:
            return None, None
        mask = torch.isin(y, keep)
        return x[mask], y[mask]

    (xt, yt), (xs, ys), (xv, yv) = (part(split.x_train, split.y_train),
                                    part(split.x_test, split.y_test),
                                    part(split.x_val, split.y_val))
    return Split(xt, yt, xs, ys, xv, yv)


def finetune_arms(pretrain: Split, finetune: Split, pretrain_lr: float,
                  pretrain_steps: int = 300, batch_size: int = 2,
                  eval_every: int = 50) -> list[Arm]:
    """The options of ``FINETUNE_OPTIONS`` as arms that fine-tune a pretrained
    network.

    Each arm's ``build`` returns a copy of ``mlp(norm="batch", activation="relu")``
    (initialized for ReLU) pretrained on ``pretrain`` for ``pretrain_steps`` steps of 60
    at ``pretrain_lr``, with batch norm prepared as the option says. The pretrained network
    depends on the seed the runner set (read back with ``torch.initial_seed()``), so the
    seeds vary pretraining and fine-tuning alike; it is trained once per seed and cached.
    Models are built in the dtype of ``pretrain``'s inputs
    (:func:`~bnlib.experiments.precision.cast_like`: float64 with
    :func:`~bnlib.experiments.precision.double_split`).

    Args:
        pretrain: the pretraining data.
        finetune: the fine-tuning data (its training part recomputes the statistics).
        pretrain_lr: the pretraining learning rate.
        pretrain_steps: pretraining steps. Default: ``300``.
        batch_size: the fine-tuning batch size. Default: ``2``.
        eval_every: fine-tuning steps between evaluations. Default: ``50``.

    Example:
        >>> from bnlib.experiments import load_digits_split
        >>> s = load_digits_split()
        >>> arms = finetune_arms(class_subset(s, range(5)), class_subset(s, range(5, 10)),
        ...                      pretrain_lr=0.1, pretrain_steps=10)
        >>> _ = torch.manual_seed(0)
        >>> [arm.name for arm in arms], type(arms[1].build()[1]).__name__
        (['updated', 'frozen', 'recomputed'], 'FrozenStatsBatchNorm')
    """
    cache: dict[int, nn.Module] = {}

    def pretrained() -> nn.Module:
        seed = torch.initial_seed()
        if seed not in cache:
            torch.manual_seed(seed)
            model = cast_like(lambda: mlp(pretrain.num_features, activation="relu",
                                          norm="batch"), pretrain)()
            train(model, pretrain, pretrain_steps, lr=pretrain_lr, seed=seed,
                  eval_every=pretrain_steps, test=False, train_accuracy=False)
            cache[seed] = model
        return copy.deepcopy(cache[seed])

    def build(option: str) -> nn.Module:
        model = pretrained()
        if option == "recomputed":
            recompute_bn_stats(model, finetune.x_train.split(60))
        if option != "updated":
            freeze_batch_norm_stats(model)
        return model

    return [Arm(o, lambda o=o: build(o),
                train_kwargs={"batch_size": batch_size, "eval_every": eval_every})
            for o in FINETUNE_OPTIONS]
