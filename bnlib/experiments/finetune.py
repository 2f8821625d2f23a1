"""Rule 5 of chapter 4: batch-norm statistics when fine-tuning with small batches on new
data (here new classes).

A network with batch norm is pretrained on digits 0-4 with batches of 60 and fine-tuned on
digits 5-9 (new classes, whose inputs also change the statistics every batch-norm layer
sees) with batches of 2. Three options for the statistics, each an arm of
:func:`bnlib.experiments.protocol.run` with its own learning rate
(``FINETUNE_OPTIONS``):

- ``"updated"``: batch norm in training mode: it normalizes with two-sample statistics and
  its running statistics follow them;
- ``"frozen"``: the pretraining statistics, fixed
  (:class:`~bnlib.experiments.frozen_bn.FrozenStatsBatchNorm`);
- ``"recomputed"``: statistics recomputed on the fine-tuning data with the pretrained
  weights (:func:`bnlib.torch.recompute_bn_stats`), then fixed.

:func:`last_bit_sensitivity` measures how far a last-bit change of the weights carries
through fine-tuning: far with two-sample statistics, not at all with fixed ones.
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

__all__ = ["FINETUNE_OPTIONS", "class_subset", "finetune_arms", "last_bit_sensitivity"]

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
        >>> arms = finetune_arms(class_subset(s, range(5)),
        ...                      class_subset(s, range(5, 10)),
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


def last_bit_sensitivity(arm: Arm, finetune: Split, steps: int, lr: float, seed: int = 0,
                         batch_size: int = 2) -> float:
    """How much a last-bit change of the first weight matrix moves the fine-tuned network.

    Builds ``arm``'s network for ``seed`` twice, the second time with its first parameter
    multiplied by :math:`1 + 2^{-52}` (one unit in the last place of a float64, about
    what another CPU's kernels change), fine-tunes both alike on ``finetune`` (the same
    batches, ``steps`` steps at ``lr``) and returns the relative change of the
    validation logits,

    .. math::

        \\frac{\\max |z' - z|}{\\max |z|} .

    Batch norm over two samples is a steep function of the difference of the two inputs
    (slope up to :math:`1/(2\\sqrt{\\epsilon})` per layer), so in training mode the change
    grows from step to step; with fixed statistics it stays at rounding level.

    Args:
        arm: one of :func:`finetune_arms`.
        finetune: the fine-tuning data (with a validation part).
        steps: fine-tuning steps.
        lr: the learning rate of both runs.
        seed: seeds the network (as the runner does) and the batch order. Default: ``0``.
        batch_size: the fine-tuning batch size. Default: ``2``.

    Returns:
        The relative change of the validation logits, ``>= 0``.

    Raises:
        ValueError: ``finetune`` has no validation part, or a run diverged.

    Example:
        >>> from bnlib.experiments import load_digits_split
        >>> from bnlib.experiments.precision import double_split
        >>> s = double_split(load_digits_split())
        >>> new = class_subset(s, range(5, 10))
        >>> arms = finetune_arms(class_subset(s, range(5)), new, pretrain_lr=0.1,
        ...                      pretrain_steps=20)
        >>> last_bit_sensitivity(arms[1], new, steps=20, lr=0.1) < 1e-9  # frozen
        True
    """
    if finetune.x_val is None:
        raise ValueError("last_bit_sensitivity needs a split with a validation part")
    logits = []
    for perturb in (False, True):
        torch.manual_seed(seed)
        model = arm.build()
        if perturb:
            with torch.no_grad():
                next(model.parameters()).mul_(1 + 2.0 ** -52)
        train(model, finetune, steps, batch_size=batch_size, lr=lr, seed=seed,
              eval_every=steps, test=False, train_accuracy=False)
        model.eval()
        with torch.no_grad():
            logits.append(model(finetune.x_val))
    z, z_changed = logits
    if not (torch.isfinite(z).all() and torch.isfinite(z_changed).all()):
        raise ValueError(f"fine-tuning diverged at lr={lr}: choose a smaller rate")
    return float((z_changed - z).abs().max() / z.abs().max())
