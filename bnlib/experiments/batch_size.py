"""Batch norm against group and layer norm as the batch shrinks (Wu & He 2018, Figure 1).

Batch normalization (BN) estimates its mean and variance from the samples of one mini-batch,
so with 2 or 4 samples per batch those estimates are noisy in training and the running
averages used at test time are poor. Group norm (GN) and layer norm (LN) normalize each sample
on its own and do not depend on the batch size at all. :func:`batch_size_sweep` trains the
same network with each normalization for a fixed number of epochs at each batch size, with
the learning rate scaled linearly with the batch size (Goyal et al. 2017), as Wu & He did.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .data import Split
from .models import NORMS, mlp, small_cnn
from .train import train

__all__ = ["scaled_lr", "steps_for_epochs", "BatchSizeSweep", "batch_size_sweep"]


def scaled_lr(batch_size: int, base_lr: float = 0.1, base_batch_size: int = 32) -> float:
    r"""The linear scaling rule: :math:`\eta = \eta_0 \, B / B_0`.

    Args:
        batch_size: :math:`B`.
        base_lr: :math:`\eta_0`, the rate at the base batch size. Default: ``0.1``.
        base_batch_size: :math:`B_0`. Default: ``32`` (Wu & He's per-GPU batch).

    Example:
        >>> scaled_lr(2)
        0.00625
    """
    if batch_size < 1 or base_batch_size < 1:
        raise ValueError(f"expected batch sizes >= 1 (got {batch_size} and {base_batch_size})")
    return base_lr * batch_size / base_batch_size


def steps_for_epochs(num_samples: int, batch_size: int, epochs: float) -> int:
    """SGD steps that show ``epochs`` passes over ``num_samples`` samples (at least one step).

    Example:
        >>> steps_for_epochs(1258, 32, 2)
        78
    """
    if epochs <= 0:
        raise ValueError(f"expected epochs > 0 (got {epochs})")
    return max(1, int(epochs * (num_samples // batch_size)))


@dataclass
class BatchSizeSweep:
    """What :func:`batch_size_sweep` returns.

    Attributes:
        norms: the normalizations, e.g. ``("batch", "group", "layer")``.
        batch_sizes: ``(B,)`` the batch sizes.
        seeds: the seeds.
        test_error: ``(norms, B, seeds)`` final test error in [0, 1] (1 for a diverged run).
        steps: ``(B,)`` SGD steps per run at each batch size.
        lr: ``(B,)`` learning rate at each batch size.
        models: ``(norm, batch_size, seed) -> trained network`` (in evaluation mode), for
            further measurements such as recomputing BN's statistics.
    """

    norms: tuple[str, ...]
    batch_sizes: np.ndarray
    seeds: tuple[int, ...]
    test_error: np.ndarray
    steps: np.ndarray
    lr: np.ndarray
    models: dict[tuple[str, int, int], nn.Module] = field(default_factory=dict)

    def error(self, norm: str) -> np.ndarray:
        """``(B, seeds)`` test errors of one normalization."""
        return self.test_error[self.norms.index(norm)]


def _build(model: str, norm: str, **model_kwargs) -> nn.Module:
    if model == "mlp":
        return mlp(norm=norm, **model_kwargs)
    if model == "cnn":
        return small_cnn(norm=norm, **model_kwargs)
    raise ValueError(f"expected model 'mlp' or 'cnn' (got {model!r})")


def batch_size_sweep(split: Split, norms: Sequence[str] = ("batch", "group", "layer"),
                     batch_sizes: Sequence[int] = (2, 4, 8, 16, 32, 64),
                     seeds: Sequence[int] = (0, 1, 2), epochs: float = 1.0,
                     base_lr: float = 0.1, base_batch_size: int = 32, momentum: float = 0.0,
                     model: str = "mlp", **model_kwargs) -> BatchSizeSweep:
    """Final test error of each normalization at each batch size, for a fixed number of epochs.

    Every run sees the same number of samples (``epochs`` passes over the training set), so
    a batch of 2 takes 32 times as many steps as a batch of 64, each with a learning rate 32
    times smaller (:func:`scaled_lr`). Seed ``s`` initializes every network with
    ``torch.manual_seed(s)`` and orders its batches with seed ``s``. The test error is measured
    in evaluation mode: BN then uses its running averages, whose quality also depends on the
    batch size.

    Args:
        split: the data (``images=True`` for ``model="cnn"``).
        norms: names accepted by :func:`bnlib.experiments.make_norm`.
            Default: ``("batch", "group", "layer")``.
        batch_sizes: samples per step. Default: ``(2, 4, 8, 16, 32, 64)``.
        seeds: one run per norm and batch size per seed. Default: ``(0, 1, 2)``.
        epochs: passes over the training set. Default: ``1.0``.
        base_lr, base_batch_size: as :func:`scaled_lr`. Defaults: ``0.1``, ``32``.
        momentum: SGD momentum (Wu & He use ``0.9``). Default: ``0.0``.
        model: ``"mlp"`` (:func:`bnlib.experiments.mlp`) or ``"cnn"``
            (:func:`bnlib.experiments.small_cnn`). Default: ``"mlp"``.
        **model_kwargs: passed to the model builder (e.g. ``activation="relu"``).

    Returns:
        A :class:`BatchSizeSweep`.
    """
    unknown = [n for n in norms if n not in NORMS]
    if unknown:
        raise ValueError(f"expected norms in {sorted(NORMS)} (got {unknown})")
    _build(model, "none", **model_kwargs)  # fail early on a bad model name or argument
    n_train = len(split.x_train)
    steps = np.array([steps_for_epochs(n_train, b, epochs) for b in batch_sizes])
    lrs = np.array([scaled_lr(b, base_lr, base_batch_size) for b in batch_sizes])
    error = np.zeros((len(norms), len(batch_sizes), len(seeds)))  # (norms, B, seeds)
    models: dict[tuple[str, int, int], nn.Module] = {}
    for i, norm in enumerate(norms):
        for j, batch_size in enumerate(batch_sizes):
            for k, seed in enumerate(seeds):
                torch.manual_seed(seed)
                net = _build(model, norm, **model_kwargs)
                history = train(net, split, steps=int(steps[j]), batch_size=batch_size,
                                lr=float(lrs[j]), seed=seed, momentum=momentum,
                                eval_every=int(steps[j]))
                error[i, j, k] = 1.0 - history.final_test_accuracy
                models[(norm, int(batch_size), int(seed))] = net.eval()
    return BatchSizeSweep(tuple(norms), np.array(batch_sizes), tuple(seeds), error, steps, lrs,
                          models)
