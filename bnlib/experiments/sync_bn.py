"""Chapter 7b's data-parallel experiment in float64: per-process ("local") against
synchronized batch norm, so that the runs reproduce on other CPUs.

:func:`bnlib.experiments.data_parallel.compare_local_and_sync_bn` trains in float32, and a few
hundred steps amplify last-bit differences between CPU kernels into a different test
accuracy; :func:`local_and_sync_accuracy` runs the same experiment in float64 (see
:mod:`bnlib.experiments.precision`). Both are meant to run in every process of a group
started by :func:`bnlib.torch.sync.launch`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from bnlib.experiments.data_parallel import normalization_error, train_data_parallel
from bnlib.torch.sync import SyncBatchNorm

from .data import load_digits_split
from .models import mlp
from .precision import double_split
from .train import accuracy

__all__ = ["local_and_sync_accuracy", "sync_demo"]


def local_and_sync_accuracy(rank: int, world_size: int, per_process_batches: Sequence[int],
                            seeds: Sequence[int], steps: int, lr: float = 0.5
                            ) -> dict[tuple[str, int, int], float]:
    """Test accuracy of an MLP (two hidden layers of 64 sigmoid units, BN, float64) trained
    data-parallel with :func:`bnlib.experiments.data_parallel.train_data_parallel`, with
    per-process and with synchronized statistics.

    Args:
        rank, world_size: this process and the group size (given by ``launch``).
        per_process_batches: samples per process per step.
        seeds: one run per mode, batch size and seed (the same initialization everywhere).
        steps: SGD steps.
        lr: learning rate, the same for both modes. Default: ``0.5``.

    Returns:
        ``{(mode, per_process_batch, seed): test accuracy}`` with ``mode`` ``"local"`` or
        ``"sync"`` (no ``"local"`` entry for a batch of 1), evaluated with this process's
        running statistics.
    """
    split = double_split(load_digits_split())
    results = {}
    for mode in ("local", "sync"):
        for b in per_process_batches:
            if mode == "local" and b == 1:
                continue  # one value per channel: local batch norm cannot train at all
            for seed in seeds:
                torch.manual_seed(seed)  # the same initialization in every process
                model = mlp(depth=2, hidden=64, norm="batch")
                if mode == "sync":
                    model = SyncBatchNorm.convert_sync_batchnorm(model)
                model = model.double()
                train_data_parallel(model, split.x_train, split.y_train, b, steps, lr, seed)
                results[(mode, b, seed)] = accuracy(model, split.x_test, split.y_test)
    return results


def sync_demo(rank: int, world_size: int, error_batches: Sequence[int],
              accuracy_batches: Sequence[int], seeds: Sequence[int], steps: int,
              lr: float = 0.5, draws: int = 30) -> dict[str, dict]:
    """:func:`bnlib.experiments.data_parallel.normalization_error` (float64 already) and
    :func:`local_and_sync_accuracy` in one process group: ``{"error": ..., "accuracy": ...}``.
    """
    return {"error": normalization_error(rank, world_size, error_batches, draws),
            "accuracy": local_and_sync_accuracy(rank, world_size, accuracy_batches, seeds,
                                                steps, lr)}
