"""Data-parallel training on CPU processes: a launcher for a gloo process group, gradient
averaging, and the experiment that compares per-process batch norm with synchronized batch
norm (:class:`bnlib.torch.SyncBatchNorm`) as the per-process batch shrinks.

Run the experiment with :func:`launch`, e.g.
``launch(compare_local_and_sync_bn, 2, (2, 4, 8), (0, 1, 2), 200)``.
"""
from __future__ import annotations

import os
import socket
import tempfile
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from bnlib.torch.sync import SyncBatchNorm

__all__ = ["average_gradients", "compare_local_and_sync_bn", "launch", "normalization_error",
           "sync_bn_demo", "train_data_parallel"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple,
            out_dir: str) -> None:
    torch.set_num_threads(1)  # one core per process; the processes run side by side
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def launch(fn: Callable, world_size: int = 2, *args: Any) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh CPU processes joined by a
    gloo process group on 127.0.0.1, and return their results in rank order.

    ``fn`` must be importable by name (defined in a module, not in a notebook), and its
    result must be saveable with ``torch.save``.

    Example:
        >>> import operator
        >>> launch(operator.mul, 2)  # rank * world_size in each process
        [0, 2]
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world_size, _free_port(), fn, args, out_dir),
                 nprocs=world_size, join=True)
        return [torch.load(os.path.join(out_dir, f"{r}.pt"), weights_only=False)
                for r in range(world_size)]


def average_gradients(model: nn.Module, group: Any = None) -> None:
    """Replace every parameter gradient by its average over the processes of ``group``, with
    one all-reduce of the flattened gradients (what ``DistributedDataParallel`` does in
    buckets). Afterwards every process holds the same gradient and takes the same step."""
    params = [p for p in model.parameters() if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in params])  # (num_params,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= dist.get_world_size(group)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p.grad))


def train_data_parallel(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        per_process_batch: int, steps: int, lr: float = 0.1,
                        seed: int = 0) -> nn.Module:
    """Train ``model`` with SGD, each of the ``W`` processes taking its own ``per_process_batch``
    rows of a shared global batch of ``W * per_process_batch`` rows per step.

    Every process must call it with the same model initialization, data and ``seed``; the
    global batches are drawn from one generator seeded by ``seed``, so all processes agree on
    them, and :func:`average_gradients` keeps the weights identical. Batch-norm layers see
    only their process's rows unless they are :class:`bnlib.torch.SyncBatchNorm`.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=generator)[:world_size * per_process_batch]
        mine = idx[rank * per_process_batch:(rank + 1) * per_process_batch]  # this share
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[mine]), y[mine]).backward()
        average_gradients(model)
        optimizer.step()
    return model


def compare_local_and_sync_bn(rank: int, world_size: int, per_process_batches: Sequence[int],
                              seeds: Sequence[int], steps: int, lr: float = 0.1
                              ) -> dict[tuple[str, int, int], float]:
    """Test accuracy on the digits of an MLP with batch norm trained data-parallel, with
    per-process ("local") and with synchronized statistics, for each per-process batch size
    and seed. Meant to run in every process of a group (see :func:`launch`).

    Returns:
        ``{(mode, per_process_batch, seed): test accuracy}`` with ``mode`` ``"local"`` or
        ``"sync"`` (no ``"local"`` entry for a batch of 1), evaluated with the running statistics of this process (in data-parallel
        practice, rank 0's model is the one saved).
    """
    from bnlib.experiments.data import load_digits_split
    from bnlib.experiments.models import mlp
    from bnlib.experiments.train import accuracy

    split = load_digits_split()
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
                train_data_parallel(model, split.x_train, split.y_train, b, steps, lr, seed)
                results[(mode, b, seed)] = accuracy(model, split.x_test, split.y_test)
    return results


def normalization_error(rank: int, world_size: int, per_process_batches: Sequence[int],
                        draws: int = 50, features: int = 16, seed: int = 0
                        ) -> dict[tuple[str, int], float]:
    """How far batch-normalized activations are from population-normalized ones, with
    per-process ("local") and with synchronized statistics, as the per-process batch shrinks.

    The activations are ``h = x W`` for the digits ``x`` and a fixed random ``W`` (like a
    first layer's pre-activations). For each per-process batch size ``b`` and each of
    ``draws`` global batches of ``W * b`` rows shared out between the processes, it records
    the root-mean-square difference between the batch-normalized rows of this process and
    ``(h - mu) / sigma`` with the statistics of all training rows. Meant to run in every
    process of a group (see :func:`launch`).

    Returns:
        ``{(mode, b): RMS error}``, ``mode`` ``"local"`` or ``"sync"``; no ``"local"`` entry
        for ``b = 1``, where a process has one value per channel.
    """
    from bnlib.experiments.data import load_digits_split

    x = load_digits_split().x_train.to(torch.float64)  # (N, 64)
    g = torch.Generator().manual_seed(seed)
    h = x @ torch.randn(x.shape[1], features, generator=g, dtype=torch.float64)  # (N, F)
    target = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)  # population
    errors = {}
    for mode in ("local", "sync"):
        for b in per_process_batches:
            if mode == "local" and b == 1:
                continue
            bn = SyncBatchNorm(features, affine=False, track_running_stats=False,
                               dtype=torch.float64)
            if mode == "local":  # the plain layer, as a single-GPU model has it
                bn = nn.BatchNorm1d(features, affine=False, track_running_stats=False,
                                    dtype=torch.float64)
            draw_gen = torch.Generator().manual_seed(seed + b)  # the same draws in all ranks
            squared = []
            for _ in range(draws):
                idx = torch.randperm(len(h), generator=draw_gen)[:world_size * b]
                mine = idx[rank * b:(rank + 1) * b]
                squared.append((bn(h[mine]) - target[mine]).square().mean())
            errors[(mode, b)] = float(torch.stack(squared).mean().sqrt())
    return errors


def sync_bn_demo(rank: int, world_size: int, error_batches: Sequence[int],
                 accuracy_batches: Sequence[int], seeds: Sequence[int], steps: int,
                 lr: float = 0.5, draws: int = 30) -> dict[str, dict]:
    """:func:`normalization_error` and :func:`compare_local_and_sync_bn` in one process
    group (one start-up instead of two): ``{"error": ..., "accuracy": ...}``."""
    return {"error": normalization_error(rank, world_size, error_batches, draws),
            "accuracy": compare_local_and_sync_bn(rank, world_size, accuracy_batches, seeds,
                                                  steps, lr)}
