"""scikit-learn's bundled handwritten digits (1,797 images of 8x8 pixels, 10 classes).

The data ships inside the scikit-learn wheel, so nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["Split", "load_digits_split", "batches"]


@dataclass(frozen=True)
class Split:
    """A train/test split as float32 inputs and int64 labels.

    Attributes:
        x_train: ``(N_train, 64)`` flat images, or ``(N_train, 1, 8, 8)`` when ``images=True``.
        y_train: ``(N_train,)`` labels 0-9.
        x_test: the test inputs, shaped like ``x_train``.
        y_test: the test labels.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def num_features(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))


def load_digits_split(seed: int = 0, test_fraction: float = 0.3, images: bool = False,
                      scale: str = "unit") -> Split:
    """Load the digits and split them with a seeded permutation.

    Args:
        seed: seed of the permutation. Default: ``0``.
        test_fraction: share of the 1,797 samples held out. Default: ``0.3``.
        images: return ``(N, 1, 8, 8)`` images instead of ``(N, 64)`` vectors. Default: ``False``.
        scale: ``"unit"`` divides pixel values 0-16 by 16 (inputs in [0, 1], not centred:
            the setting where normalization matters), ``"standard"`` standardizes each pixel
            with training-set statistics. Default: ``"unit"``.

    Example:
        >>> split = load_digits_split()
        >>> tuple(split.x_train.shape), tuple(split.x_test.shape)
        ((1258, 64), (539, 64))
    """
    from sklearn.datasets import load_digits  # imported here: only experiments need it

    if scale not in ("unit", "standard"):
        raise ValueError(f"expected scale 'unit' or 'standard' (got {scale!r})")
    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0  # (1797, 64) in [0, 1]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train_ = order[:n_test], order[n_test:]
    x_train, x_test = x[train_], x[test]
    if scale == "standard":
        mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-3
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    if images:
        x_train, x_test = x_train.reshape(-1, 1, 8, 8), x_test.reshape(-1, 1, 8, 8)
    as_t = torch.from_numpy
    return Split(as_t(np.ascontiguousarray(x_train)), as_t(y[train_]),
                 as_t(np.ascontiguousarray(x_test)), as_t(y[test]))


def batches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator
            ) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield shuffled mini-batches forever, reshuffling with ``generator`` each epoch; the
    last incomplete batch of an epoch is dropped, so every batch has ``batch_size`` samples."""
    if not 1 <= batch_size <= len(x):
        raise ValueError(f"expected 1 <= batch_size <= {len(x)} (got {batch_size})")
    while True:
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]
