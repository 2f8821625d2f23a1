"""Chapter 7b's data-parallel experiment in float64: per-process ("local") against
synchronized batch norm, each mode at its own learning rate chosen on validation, so that
the comparison is fair and the runs reproduce on other CPUs.

:func:`bnlib.experiments.data_parallel.compare_local_and_sync_bn` trains in float32 at one
shared learning rate, and a few hundred steps amplify last-bit differences between CPU
kernels into a different test accuracy; :func:`local_and_sync_accuracy` runs the
experiment in float64 (see :mod:`bnlib.experiments.precision`) and gives each mode its
own learning rate. Both are meant to run in every process of a group started by
:func:`bnlib.experiments.data_parallel.launch`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from bnlib.torch.sync import SyncBatchNorm

from .data import load_digits_split
from .data_parallel import normalization_error, train_data_parallel
from .models import mlp
from .precision import double_split
from .lr_search import nearest_grid_index
from .protocol import LR_GRID, EdgeOfGridError
from .train import accuracy

__all__ = ["local_and_sync_accuracy", "sync_demo"]


def _train(mode: str, b: int, steps: int, lr: float, seed: int, split) -> torch.nn.Module:
    torch.manual_seed(seed)  # the same initialization in every process
    model = mlp(depth=2, hidden=64, norm="batch")
    if mode == "sync":
        model = SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.double()
    return train_data_parallel(model, split.x_train, split.y_train, b, steps, lr, seed)


def _rank0(value: float) -> float:
    # every process takes rank 0's value, so that all choose the same learning rate
    t = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return float(t)


def local_and_sync_accuracy(rank: int, world_size: int, per_process_batches: Sequence[int],
                            seeds: Sequence[int], steps: int, start: float = 1.0,
                            report_seeds: Sequence[int] | None = None,
                            grid: Sequence[float] = LR_GRID) -> dict[str, dict]:
    """Test accuracy of an MLP (two hidden layers of 64 sigmoid units, BN, float64) trained
    data-parallel with :func:`bnlib.experiments.data_parallel.train_data_parallel`, with
    per-process and with synchronized statistics, each mode and batch size at its own
    learning rate.

    For each mode and per-process batch size the learning rate is chosen on validation
    (final validation accuracy of rank 0's model, mean over ``seeds``) on a slice of
    ``grid`` that starts as the three points centred on ``start`` and widens by one point
    on the side of an edge optimum, as :func:`bnlib.experiments.lr_search.run_widening`
    does; every process makes the same choice (rank 0's scores are broadcast). The test
    set is touched once per reported run, at the chosen rate.

    Args:
        rank, world_size: this process and the group size (given by ``launch``).
        per_process_batches: samples per process per step.
        seeds: the seeds that choose the learning rate (the same initialization in every
            process).
        steps: SGD steps.
        start: centre of the first slice. Default: ``1.0``.
        report_seeds: the seeds reported on test (a superset of ``seeds``). Default:
            ``None`` (= ``seeds``).
        grid: the shared grid. Default: :data:`~bnlib.experiments.protocol.LR_GRID`.

    Returns:
        Three dicts,
        ``{"test": {(mode, b, seed): test accuracy}, "lr": {(mode, b): chosen rate},
        "val": {(mode, b, lr): mean validation accuracy}}``, ``mode`` ``"local"`` or
        ``"sync"`` (no ``"local"`` entry for a batch of 1); accuracies of this process's
        model with its running statistics.

    Raises:
        ~bnlib.experiments.protocol.EdgeOfGridError: the best point is at an end of ``grid``.

    Example:
        >>> from bnlib.experiments.data_parallel import launch
        >>> r0, r1 = launch(local_and_sync_accuracy, 2, (4,), (0,), 2)  # doctest: +SKIP
    """
    split = double_split(load_digits_split())
    report_seeds = tuple(seeds) if report_seeds is None else tuple(report_seeds)
    grid = tuple(grid)
    out: dict[str, dict] = {"test": {}, "lr": {}, "val": {}}
    for mode in ("local", "sync"):
        for b in per_process_batches:
            if mode == "local" and b == 1:
                continue  # one value per channel: local batch norm cannot train at all
            models: dict[tuple[float, int], torch.nn.Module] = {}

            def score(lr: float) -> float:
                if (mode, b, lr) not in out["val"]:
                    accs = []
                    for seed in seeds:
                        models[(lr, seed)] = _train(mode, b, steps, lr, seed, split)
                        accs.append(accuracy(models[(lr, seed)], split.x_val, split.y_val))
                    out["val"][(mode, b, lr)] = _rank0(sum(accs) / len(accs))
                return out["val"][(mode, b, lr)]

            k = min(max(nearest_grid_index(start, grid), 1), len(grid) - 2)
            lo, hi = k - 1, k + 1
            while True:
                scores = [score(grid[i]) for i in range(lo, hi + 1)]
                best = lo + max(range(len(scores)), key=scores.__getitem__)
                if best == lo and lo > 0:
                    lo -= 1
                elif best == hi and hi < len(grid) - 1:
                    hi += 1
                elif best in (0, len(grid) - 1):
                    raise EdgeOfGridError(f"{mode} BN, b = {b}: best learning rate "
                                          f"{grid[best]:.3g} is at an end of the grid")
                else:
                    break
            lr = grid[best]
            out["lr"][(mode, b)] = lr
            for seed in report_seeds:
                model = models.get((lr, seed)) or _train(mode, b, steps, lr, seed, split)
                out["test"][(mode, b, seed)] = accuracy(model, split.x_test, split.y_test)
    return out


def sync_demo(rank: int, world_size: int, error_batches: Sequence[int],
              accuracy_batches: Sequence[int], seeds: Sequence[int], steps: int,
              start: float = 1.0, report_seeds: Sequence[int] | None = None,
              draws: int = 30) -> dict[str, dict]:
    """:func:`bnlib.experiments.data_parallel.normalization_error` (float64 already) and
    :func:`local_and_sync_accuracy` in one process group (one start-up instead of two):
    ``{"error": ..., "accuracy": ...}``.

    Example:
        >>> from bnlib.experiments.data_parallel import launch
        >>> r0, r1 = launch(sync_demo, 2, (2,), (2,), (0,), 2)  # doctest: +SKIP
    """
    return {"error": normalization_error(rank, world_size, error_batches, draws),
            "accuracy": local_and_sync_accuracy(rank, world_size, accuracy_batches, seeds,
                                                steps, start, report_seeds)}
