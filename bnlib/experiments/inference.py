"""Training mode versus inference mode: what goes wrong when a model is evaluated with batch
statistics (:mod:`bnlib.experiments.running_stats` compares the running statistics with
precise ones)."""
from __future__ import annotations

import copy
import torch
from torch import Tensor, nn


__all__ = ["batch_stat_accuracy", "probe_spread"]


@torch.no_grad()
def batch_stat_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int,
                        sort_by_label: bool = False) -> float:
    """Accuracy when inference is (wrongly) run in training mode, i.e. with batch statistics.

    The model is deep-copied, so its running statistics are not disturbed (in training mode
    every forward pass would otherwise update them with test data).

    Args:
        model: a classifier containing batch-norm layers.
        x, y: the evaluation data.
        batch_size: size of the chunks the data is fed in; each chunk is normalized by its
            own statistics (a trailing single sample joins the chunk before it).
        sort_by_label: feed the data sorted by class, so each chunk holds few classes (a
            non-i.i.d. stream, e.g. a video or one user's photos).

    Returns:
        Accuracy in [0, 1].
    """
    if batch_size < 2:
        raise ValueError(f"expected batch_size >= 2 (got {batch_size}): in training mode batch "
                         "norm refuses a batch with one value per channel")
    if sort_by_label:
        order = torch.argsort(y, stable=True)
        x, y = x[order], y[order]
    sizes = [batch_size] * (len(x) // batch_size) + ([len(x) % batch_size] if len(x) % batch_size else [])
    if sizes[-1] == 1 and len(sizes) > 1:  # fold a trailing single sample into the chunk before
        sizes[-2:] = [sizes[-2] + 1]
    probe = copy.deepcopy(model).train()
    correct = sum(int((probe(xb).argmax(dim=1) == yb).sum())
                  for xb, yb in zip(x.split(sizes), y.split(sizes)))
    return correct / len(y)


@torch.no_grad()
def probe_spread(layer: nn.Module, pool: Tensor, companions: int, draws: int = 100,
                 generator: torch.Generator | None = None) -> tuple[float, float]:
    """How much one sample's output depends on its batch companions, in each mode.

    The first row of ``pool`` (the probe) is fed ``draws`` times, each time with
    ``companions`` other rows drawn at random from the rest of ``pool``, through a copy of
    ``layer`` in training mode and in evaluation mode.

    Args:
        layer: a batch-norm layer (or a network with batch-norm layers).
        pool: the data, ``(N, C)``; row 0 is the probe.
        companions: other samples per batch (``>= 1``).
        draws: number of batches. Default: ``100``.
        generator: the random source of the draws. Default: ``None`` (torch's global one).

    Returns:
        ``(train_std, eval_std)``: the largest, over output channels, standard deviation of
        the probe's output across the draws, in training and in evaluation mode.
    """
    if companions < 1:
        raise ValueError(f"expected companions >= 1 (got {companions})")
    probe = copy.deepcopy(layer)
    spreads = []
    for training in (True, False):
        probe.train(training)
        outs = [probe(torch.cat([pool[:1], pool[1 + torch.randint(
            0, len(pool) - 1, (companions,), generator=generator)]]))[0]
            for _ in range(draws)]
        spreads.append(float(torch.stack(outs).std(dim=0).max()))
    return spreads[0], spreads[1]
