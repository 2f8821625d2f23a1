"""Learning-rate sweep: the range of step sizes a network trains at, with and without BN.

Each network (by default the Figure 1 network of :mod:`bnlib.experiments.ioffe`: three
hidden layers of 100 sigmoid units) is trained for a fixed budget of SGD steps at each
learning rate on a log grid, for several seeds, and two things are recorded: the final test
accuracy and whether the run diverged.

A run *diverged* when its training loss became NaN or infinite, or when its mean training
loss over the last evaluation window ends more than 10 % above ``log(num_classes)``, the loss
of a uniform guess: the updates made the network confidently wrong, worse than knowing
nothing. (A network that does not learn at all sits at about ``log(num_classes)``: that is
"stuck", not "diverged".) A learning rate is *stable* when no seed diverged and the mean
final test accuracy over seeds reached the target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .data import Split, load_digits_split
from .models import mlp
from .train import History, train

__all__ = ["SweepResult", "is_diverged", "lr_sweep", "stable_range", "sweep_append",
           "sweep_from_choice"]


def is_diverged(history: History, num_classes: int = 10, tolerance: float = 0.1) -> bool:
    """Whether a run diverged: its loss became non-finite, or its final mean training loss
    exceeds ``(1 + tolerance) * log(num_classes)``, clearly worse than a uniform guess.

    Args:
        history: a finished run.
        num_classes: Default: ``10``.
        tolerance: relative margin above the uniform-guess loss. Default: ``0.1``.

    Example:
        >>> is_diverged(History(train_loss=[float("nan"), 2.31])), is_diverged(History(train_loss=[2.3, 2.6]))
        (False, True)
    """
    if history.diverged:
        return True
    final = history.train_loss[-1]
    return not math.isfinite(final) or final > (1.0 + tolerance) * math.log(num_classes)


def stable_range(lrs: np.ndarray, ok: np.ndarray) -> tuple[float, float] | None:
    """The longest run of consecutive grid points where ``ok`` holds, as ``(lr_min, lr_max)``.

    Args:
        lrs: ``(L,)`` increasing learning rates.
        ok: ``(L,)`` booleans.

    Returns:
        ``(lr_min, lr_max)`` of the longest contiguous stretch (the lower one on ties), or
        ``None`` when ``ok`` holds nowhere.

    Example:
        >>> stable_range(np.array([0.01, 0.1, 1.0, 10.0]), np.array([False, True, True, False]))
        (0.1, 1.0)
    """
    best: tuple[int, int] | None = None
    start = None
    for i, flag in enumerate(list(ok) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if best is None or i - start > best[1] - best[0] + 1:
                best = (start, i - 1)
            start = None
    return None if best is None else (float(lrs[best[0]]), float(lrs[best[1]]))


@dataclass
class SweepResult:
    """The outcome of :func:`lr_sweep`.

    Attributes:
        lrs: ``(L,)`` learning rates, increasing.
        seeds: the seeds, one column each.
        steps: SGD steps per run.
        final_test_accuracy: ``{norm: (L, S)}``; ``0`` for a run stopped by a non-finite loss.
        final_train_loss: ``{norm: (L, S)}`` mean training loss over the last window.
        diverged: ``{norm: (L, S)}`` booleans from :func:`is_diverged`.
    """

    lrs: np.ndarray
    seeds: tuple[int, ...]
    steps: int
    final_test_accuracy: dict[str, np.ndarray]
    final_train_loss: dict[str, np.ndarray]
    diverged: dict[str, np.ndarray]

    def stable(self, norm: str, target: float) -> np.ndarray:
        """``(L,)``: no seed diverged and the mean final test accuracy over seeds is
        >= ``target``."""
        return (~self.diverged[norm].any(axis=1)
                & (self.final_test_accuracy[norm].mean(axis=1) >= target))

    def stable_range(self, norm: str, target: float) -> tuple[float, float] | None:
        """:func:`stable_range` of :meth:`stable`."""
        return stable_range(self.lrs, self.stable(norm, target))


def lr_sweep(lrs: Sequence[float], norms: Sequence[str] = ("none", "batch"),
             seeds: Sequence[int] = (0, 1, 2), steps: int = 300, batch_size: int = 60,
             eval_every: int = 50, activation: str = "sigmoid", depth: int = 3,
             split: Split | None = None) -> SweepResult:
    """Train one network per (norm, learning rate, seed) and record the final outcome.

    Args:
        lrs: learning rates (sorted increasingly here).
        norms: Default: ``("none", "batch")``.
        seeds: ``torch.manual_seed(seed)`` before each model and the batch order's seed.
            Default: ``(0, 1, 2)``.
        steps: SGD updates per run (plain SGD, no momentum). Default: ``300``.
        batch_size: Default: ``60``.
        eval_every: the final loss is the mean over the last ``eval_every`` steps. Default: ``50``.
        activation: Default: ``"sigmoid"``.
        depth: hidden layers of 100 units. Default: ``3``.
        split: the data; ``None`` loads ``load_digits_split()`` (seed 0, unit scale).

    Returns:
        A :class:`SweepResult`.

    Example:
        >>> r = lr_sweep([0.1, 1.0], norms=("batch",), seeds=(0,), steps=20, eval_every=10)
        >>> r.final_test_accuracy["batch"].shape
        (2, 1)
    """
    split = load_digits_split() if split is None else split
    grid = np.sort(np.asarray(lrs, dtype=np.float64))
    if grid.ndim != 1 or len(grid) == 0 or not (grid > 0).all():
        raise ValueError(f"expected positive learning rates (got {list(lrs)})")
    shape = (len(grid), len(seeds))
    acc = {n: np.zeros(shape) for n in norms}
    loss = {n: np.zeros(shape) for n in norms}
    div = {n: np.zeros(shape, dtype=bool) for n in norms}
    for norm in norms:
        for i, lr in enumerate(grid):
            for j, seed in enumerate(seeds):
                torch.manual_seed(seed)
                model = mlp(in_features=split.num_features, depth=depth,
                            activation=activation, norm=norm)
                h = train(model, split, steps=steps, batch_size=batch_size, lr=float(lr),
                          seed=seed, eval_every=eval_every)
                acc[norm][i, j] = h.final_test_accuracy
                loss[norm][i, j] = h.train_loss[-1] if not h.diverged else float("inf")
                div[norm][i, j] = is_diverged(h)
    return SweepResult(grid, tuple(seeds), steps, acc, loss, div)


def sweep_from_choice(choice, target: float) -> dict[str, np.ndarray]:
    """The learning-rate sweep that :func:`~bnlib.experiments.protocol.choose_lr` already ran,
    read on validation (test untouched): no extra training.

    Args:
        choice: an :class:`~bnlib.experiments.protocol.LrChoice`.
        target: validation accuracy a usable learning rate must reach on average.

    Returns:
        A dict of arrays,
        ``{"lrs": (L,), "accuracy": (L, S) final validation accuracy (0 when diverged),
        "diverged": (L, S) from :func:`is_diverged`, "usable": (L,) no seed diverged and
        mean accuracy >= target}``. "Usable" here means "reaches the target within the
        run's budget"; it is not :meth:`~bnlib.experiments.protocol.LrChoice.usable`
        (the rates with no measurable difference from the chosen one).

    Example:
        >>> from bnlib.experiments import LR_GRID, Arm, choose_lr, load_digits_split, mlp
        >>> arm = Arm("bn", lambda: mlp(norm="batch", depth=1), train_kwargs={"eval_every": 10})
        >>> table = sweep_from_choice(choose_lr(arm, load_digits_split(), 20, (0, 1)), 0.5)
        >>> table["accuracy"].shape
        (9, 2)
    """
    lrs = np.array(choice.grid)
    acc = np.array([[h.final_val_accuracy for h in choice.histories[lr]] for lr in choice.grid])
    div = np.array([[is_diverged(h) for h in choice.histories[lr]] for lr in choice.grid])
    usable = ~div.any(axis=1) & (acc.mean(axis=1) >= target)
    return {"lrs": lrs, "accuracy": acc, "diverged": div, "usable": usable}


def sweep_append(table: dict[str, np.ndarray], lr: float, histories, target: float
                 ) -> dict[str, np.ndarray]:
    """A :func:`sweep_from_choice` table with one more learning rate, above the table's
    largest, read from ``histories`` (one finished run per seed, the table's seeds, e.g.
    ``run(..., lr=lr).histories[name]``); test untouched.

    Args:
        table: from :func:`sweep_from_choice` (or this function).
        lr: the new learning rate, larger than every rate in ``table``.
        histories: one :class:`~bnlib.experiments.History` per seed.
        target: as for :func:`sweep_from_choice`.

    Returns:
        A new table; ``table`` is not modified.

    Example:
        >>> t = {"lrs": np.array([0.1]), "accuracy": np.array([[0.9, 0.8]]),
        ...      "diverged": np.array([[False, False]]), "usable": np.array([True])}
        >>> h = History(train_loss=[2.3, float("nan")], val_accuracy=[0.1, 0.1])
        >>> sweep_append(t, 1.0, [h, h], 0.5)["usable"].tolist()
        [True, False]
    """
    if lr <= table["lrs"].max():
        raise ValueError(f"expected a learning rate above {table['lrs'].max():g} (got {lr:g})")
    if len(histories) != table["accuracy"].shape[1]:
        raise ValueError(f"expected {table['accuracy'].shape[1]} histories, one per seed "
                         f"(got {len(histories)})")
    acc = np.array([h.final_val_accuracy for h in histories])
    div = np.array([is_diverged(h) for h in histories])
    usable = not div.any() and acc.mean() >= target
    return {"lrs": np.append(table["lrs"], lr),
            "accuracy": np.vstack([table["accuracy"], acc]),
            "diverged": np.vstack([table["diverged"], div]),
            "usable": np.append(table["usable"], usable)}
