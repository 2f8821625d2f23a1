"""scikit-learn's bundled handwritten digits (1,797 images of 8x8 pixels, 10 classes).

The data ships inside the scikit-learn wheel, so nothing is downloaded. The split has three
parts: test is held out first; validation is carved from what remains (never from test)
and makes every choice (learning rate, stopping); the rest is the training part.
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
    """A train/validation/test split as float32 inputs and int64 labels.

    Attributes:
        x_train: ``(N_train, 64)`` flat images, or ``(N_train, 1, 8, 8)`` when ``images=True``.
        y_train: ``(N_train,)`` labels 0-9.
        x_test: the test inputs, shaped like ``x_train``.
        y_test: the test labels.
        x_val: the validation inputs (carved from the training part), shaped like ``x_train``.
        y_val: the validation labels.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_val: Tensor | None = None
    y_val: Tensor | None = None

    @property
    def num_features(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))


def load_digits_split(seed: int = 0, test_fraction: float = 0.3, val_fraction: float = 0.2,
                      images: bool = False, scale: str = "standard") -> Split:
    """Load the digits and split them into train, validation and test with a seeded permutation.

    With ``scale="standard"`` each pixel ``j`` becomes
    :math:`(x_j - \\mu_j) / \\sigma_j` with the mean :math:`\\mu_j` and standard deviation
    :math:`\\sigma_j` of the final training part only (validation and test excluded);
    a pixel constant on the training part (:math:`\\sigma_j = 0`) is only centred.

    Args:
        seed: seed of the permutation. Default: ``0``.
        test_fraction: share of the 1,797 samples held out for test. Default: ``0.3``.
        val_fraction: share of the remaining (non-test) samples held out for validation;
            ``0`` gives no validation set (``x_val`` is ``None``). Default: ``0.2``.
        images: return ``(N, 1, 8, 8)`` images instead of ``(N, 64)`` vectors. Default: ``False``.
        scale: ``"standard"`` standardizes each pixel with training statistics;
            ``"unit"`` divides pixel values 0-16 by 16 (inputs in [0, 1], not centred: for
            experiments about input scale). Default: ``"standard"``.

    Shape:
        1,797 samples: 539 test; of the other 1,258, 252 validation and 1,006 training
        (the defaults).

    Example:
        >>> split = load_digits_split()
        >>> [tuple(t.shape) for t in (split.x_train, split.x_val, split.x_test)]
        [(1006, 64), (252, 64), (539, 64)]
    """
    from sklearn.datasets import load_digits  # imported here: only experiments need it

    if scale not in ("unit", "standard"):
        raise ValueError(f"expected scale 'unit' or 'standard' (got {scale!r})")
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1:
        raise ValueError(f"expected 0 < test_fraction < 1 and 0 <= val_fraction < 1 "
                         f"(got {test_fraction}, {val_fraction})")
    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0  # (1797, 64) in [0, 1]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, rest = order[:n_test], order[n_test:]
    n_val = int(round(val_fraction * len(rest)))
    val, train_ = rest[:n_val], rest[n_val:]
    parts = [x[train_], x[val], x[test]]
    if scale == "standard":
        mean, std = parts[0].mean(axis=0), parts[0].std(axis=0)
        std = np.where(std > 0, std, 1.0).astype(np.float32)
        parts = [(p - mean) / std for p in parts]
    if images:
        parts = [p.reshape(-1, 1, 8, 8) for p in parts]
    xt, xv, xs = (torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32)) for p in parts)
    yt, yv, ys = (torch.from_numpy(y[i]) for i in (train_, val, test))
    if n_val == 0:
        return Split(xt, yt, xs, ys)
    return Split(xt, yt, xs, ys, xv, yv)


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
