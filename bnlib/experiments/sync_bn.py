"""Chapter 7b's data-parallel experiment in float64: per-process ("local") against
synchronized batch norm, each mode at its own learning rate chosen on validation, so that
the comparison is fair and the runs reproduce on other CPUs.

:func:`bnlib.experiments.data_parallel.compare_local_and_sync_bn` trains in float32 at one
shared learning rate, and a few hundred steps amplify last-bit differences between CPU
kernels into a different test accuracy; :func:`local_and_sync_accuracy` runs the
experiment in float64 (see :mod:`bnlib.experiments.precision`) and gives each mode its
own learning rate; it runs in every process of a group started by
:func:`bnlib.experiments.data_parallel.launch`.

Data-parallel training is, step for step, one computation: each of the ``W`` processes
takes ``b`` rows of a global batch of ``W b`` and the gradients are averaged, so one
process that normalizes each share on its own ("local") or the whole global batch
("sync") and averages the shares' losses takes the same steps
(:func:`simulate_data_parallel`). :func:`simulated_accuracy` runs the experiment that way,
without the communication of a process group (most of the data-parallel run's CPU time
at this size), and :func:`sync_demo` checks, inside a process group, that the simulation
gives the data-parallel weights.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from bnlib.torch.sync import SyncBatchNorm

from .data import load_digits_split
from .data_parallel import normalization_error, train_data_parallel
from .models import mlp
from .precision import double_split
from .lr_search import nearest_grid_index
from .protocol import LR_GRID, EdgeOfGridError
from .train import accuracy

__all__ = ["local_and_sync_accuracy", "simulate_data_parallel", "simulated_accuracy",
           "sync_demo"]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # the same initialization in every process
    return mlp(depth=2, hidden=64, norm="batch").double()


def _train(mode: str, b: int, steps: int, lr: float, seed: int, split) -> torch.nn.Module:
    model = _model(seed)
    if mode == "sync":
        model = SyncBatchNorm.convert_sync_batchnorm(model)
    return train_data_parallel(model, split.x_train, split.y_train, b, steps, lr, seed)


def simulate_data_parallel(mode: str, b: int, steps: int, lr: float, seed: int, split,
                           world_size: int = 2) -> torch.nn.Module:
    """In one process, the steps :func:`bnlib.experiments.data_parallel.train_data_parallel`
    takes in ``world_size`` processes with the model of this experiment, and rank 0's model.

    At each step the same global batch of ``world_size * b`` rows is drawn; the loss is
    the mean over the shares of each share's mean cross-entropy (the averaged gradient of
    data parallelism). With ``mode="local"`` every share passes through its own replica,
    which shares the parameters but keeps its own BN buffers (a process's running
    statistics); with ``mode="sync"`` the global batch passes through one plain BN model,
    whose statistics are those of the global batch, as synchronized BN's.

    Args:
        mode: ``"local"`` or ``"sync"``.
        b: rows per process per step.
        steps: SGD steps.
        lr: learning rate.
        seed: initialization and batch order.
        split: the data (float64 inputs).
        world_size: the number of processes simulated. Default: ``2``.

    Returns:
        Rank 0's model (its running statistics are those of rank 0's shares).

    Example:
        >>> from bnlib.experiments.data import load_digits_split
        >>> from bnlib.experiments.precision import double_split
        >>> split = double_split(load_digits_split())
        >>> simulate_data_parallel("local", 4, 3, 1.0, 0, split)[1].num_batches_tracked
        tensor(3)
    """
    if mode not in ("local", "sync"):
        raise ValueError(f"expected mode 'local' or 'sync' (got {mode!r})")
    model = _model(seed)
    replicas = [model]
    if mode == "local":
        for _ in range(world_size - 1):
            replica = copy.deepcopy(model)
            for src, dst in zip(model.modules(), replica.modules()):
                for name, param in src._parameters.items():
                    dst._parameters[name] = param  # one set of weights, own buffers
            replicas.append(replica)
    x, y = split.x_train, split.y_train
    generator = torch.Generator().manual_seed(seed)  # the draws of train_data_parallel
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for replica in replicas:
        replica.train()
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=generator)[:world_size * b]
        optimizer.zero_grad(set_to_none=True)
        if mode == "sync":
            loss = F.cross_entropy(model(x[idx]), y[idx])
        else:
            shares = idx.view(world_size, b)
            loss = sum(F.cross_entropy(r(x[s]), y[s]) for r, s in zip(replicas, shares))
            loss = loss / world_size
        loss.backward()
        optimizer.step()
    return model


def _widen(score: Callable[[float], float], start: float, grid: tuple[float, ...],
           what: str) -> float:
    """The best learning rate of a slice of ``grid`` that starts as the three points
    centred on ``start`` and widens by one point on the side of an edge optimum."""
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
            raise EdgeOfGridError(f"{what}: best learning rate {grid[best]:.3g} is at an "
                                  f"end of the grid")
        else:
            return grid[best]


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
        >>> launch(local_and_sync_accuracy, 2, (4,), (0,), 2)  # doctest: +SKIP
    """
    split = double_split(load_digits_split())
    return _choose_and_report(
        lambda mode, b, lr, seed: _train(mode, b, steps, lr, seed, split), split,
        per_process_batches, seeds, report_seeds, start, grid, share=_rank0)


def simulated_accuracy(per_process_batches: Sequence[int], seeds: Sequence[int],
                       steps: int, start: float = 1.0,
                       report_seeds: Sequence[int] | None = None, world_size: int = 2,
                       grid: Sequence[float] = LR_GRID) -> dict[str, dict]:
    """What :func:`local_and_sync_accuracy` measures in ``world_size`` processes, computed
    in this one with :func:`simulate_data_parallel`: the test accuracy of rank 0's model for
    each mode and per-process batch size, each at its own learning rate chosen on
    validation (final validation accuracy, mean over ``seeds``) on a slice of ``grid`` that
    starts as the three points centred on ``start`` and widens until its best point is
    inside. The test set is touched once per reported run, at the chosen rate.

    Args:
        per_process_batches: samples per process per step.
        seeds: the seeds that choose the learning rate.
        steps: SGD steps.
        start: centre of the first slice. Default: ``1.0``.
        report_seeds: the seeds reported on test (a superset of ``seeds``). Default:
            ``None`` (= ``seeds``).
        world_size: the number of processes simulated. Default: ``2``.
        grid: the shared grid. Default: :data:`~bnlib.experiments.protocol.LR_GRID`.

    Returns:
        dict: three entries; ``"test"`` maps ``(mode, b, seed)`` to the test
        accuracy, ``"lr"`` maps ``(mode, b)`` to the chosen rate and ``"val"`` maps
        ``(mode, b, lr)`` to the mean validation accuracy (no ``"local"`` entry for a
        batch of 1).

    Raises:
        ~bnlib.experiments.protocol.EdgeOfGridError: the best point is at an end of ``grid``.

    Example:
        >>> out = simulated_accuracy((4,), (0,), 2)  # doctest: +SKIP
    """
    split = double_split(load_digits_split())
    return _choose_and_report(
        lambda mode, b, lr, seed: simulate_data_parallel(mode, b, steps, lr, seed, split,
                                                         world_size),
        split, per_process_batches, seeds, report_seeds, start, grid)


def _choose_and_report(train: Callable, split, per_process_batches: Sequence[int],
                       seeds: Sequence[int], report_seeds: Sequence[int] | None,
                       start: float, grid: Sequence[float],
                       share: Callable[[float], float] = lambda v: v) -> dict[str, dict]:
    """The search and report of :func:`local_and_sync_accuracy` and
    :func:`simulated_accuracy`: for each mode and batch, the rate :func:`_widen` chooses
    by mean validation accuracy over ``seeds`` (``share`` makes the processes agree on
    it), then the test accuracy of each of ``report_seeds`` at that rate.
    ``train(mode, b, lr, seed)`` trains one model; each is trained once."""
    report_seeds = tuple(seeds) if report_seeds is None else tuple(report_seeds)
    out: dict[str, dict] = {"test": {}, "lr": {}, "val": {}}
    for mode in ("local", "sync"):
        for b in per_process_batches:
            if mode == "local" and b == 1:
                continue  # one value per channel: local batch norm cannot train at all
            models: dict[tuple[float, int], torch.nn.Module] = {}

            def fit(lr: float, seed: int) -> torch.nn.Module:
                if (lr, seed) not in models:
                    models[(lr, seed)] = train(mode, b, lr, seed)
                return models[(lr, seed)]

            def score(lr: float) -> float:
                if (mode, b, lr) not in out["val"]:
                    accs = [accuracy(fit(lr, s), split.x_val, split.y_val) for s in seeds]
                    out["val"][(mode, b, lr)] = share(sum(accs) / len(accs))
                return out["val"][(mode, b, lr)]

            lr = _widen(score, start, tuple(grid), f"{mode} BN, b = {b}")
            out["lr"][(mode, b)] = lr
            for seed in report_seeds:
                out["test"][(mode, b, seed)] = accuracy(fit(lr, seed), split.x_test,
                                                        split.y_test)
    return out


@torch.no_grad()
def _max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest absolute difference between two models' parameters and BN buffers."""
    return max(float((p - q).abs().max()) for p, q in
               zip(list(a.parameters()) + list(a.buffers()),
                   list(b.parameters()) + list(b.buffers())))


def sync_demo(rank: int, world_size: int, error_batches: Sequence[int],
              check_batch: int = 4, check_steps: int = 150, check_lr: float = 1.0,
              error_seeds: Sequence[int] = (0, 1, 2, 3, 4), draws: int = 30) -> dict[str, dict]:
    """Chapter 7b's process-group run: :func:`bnlib.experiments.data_parallel.normalization_error`
    (float64) for each of ``error_seeds`` (each seed draws its own ``W`` and batches), and,
    for each mode, how far the model trained data-parallel
    (:func:`~bnlib.experiments.data_parallel.train_data_parallel`, with
    :class:`bnlib.torch.SyncBatchNorm` for ``"sync"``) is from :func:`simulate_data_parallel`
    after ``check_steps`` steps at ``check_lr`` with seed 0 (largest absolute difference of
    parameters and BN buffers, rank 0's model against the simulation's).

    Returns:
        ``{"error": {(mode, b): [RMS error per seed]}, "check": {mode: difference}}``
        (``"check"`` is empty except in rank 0).

    Example:
        >>> from bnlib.experiments.data_parallel import launch
        >>> r0, r1 = launch(sync_demo, 2, (2,), 2, 3)  # doctest: +SKIP
    """
    errors: dict[tuple[str, int], list[float]] = {}
    for seed in error_seeds:
        for key, value in normalization_error(rank, world_size, error_batches, draws,
                                              seed=seed).items():
            errors.setdefault(key, []).append(value)
    split = double_split(load_digits_split())
    check = {}
    for mode in ("local", "sync"):
        parallel = _train(mode, check_batch, check_steps, check_lr, 0, split)  # all ranks
        if rank == 0:  # the simulation returns rank 0's model
            alone = simulate_data_parallel(mode, check_batch, check_steps, check_lr, 0,
                                           split, world_size)
            check[mode] = _max_difference(parallel, alone)
    return {"error": errors, "check": check}
