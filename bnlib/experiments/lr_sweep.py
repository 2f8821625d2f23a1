"""Learning-rate sweep: the range of step sizes a network trains at, with and without BN.

Each network (by default the Figure 1 network of :mod:`bnlib.experiments.ioffe`: three
hidden layers of 100 sigmoid units) is trained for a fixed budget of SGD steps at each
learning rate on a log grid, for several seeds, and two things are recorded: the final test
accuracy and whether the run diverged.

A run *diverged* when its training loss became NaN or infinite, or when its last recorded
training loss (``History.train_loss``: the mean over the steps
since the previous evaluation, so over ``eval_every`` steps, one mini-batch when the run
evaluates every step) is more than 10 % above ``log(num_classes)``, the loss of a uniform
guess: the updates made the network confidently wrong, worse than knowing nothing. (A
network that does not learn at all sits at about ``log(num_classes)``: that is "stuck", not
"diverged".) A learning rate is *stable* when no seed diverged, and *usable* (within the
run's budget) when it is stable and the mean final accuracy over seeds reached the target.

:func:`check_usable` grades a reader's implementation of that rule (chapter 1's exercise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..audit import CheckResult
from .data import Split, load_digits_split
from .models import mlp
from .train import History, train

__all__ = ["SweepResult", "check_usable", "is_diverged", "is_usable", "lr_sweep",
           "stable_range", "sweep_append", "sweep_from_choice"]


def is_diverged(history: History, num_classes: int = 10, tolerance: float = 0.1) -> bool:
    """Whether a run diverged: its loss became non-finite, or its final mean training loss
    exceeds ``(1 + tolerance) * log(num_classes)``, clearly worse than a uniform guess.

    Args:
        history: a finished run.
        num_classes: Default: ``10``.
        tolerance: relative margin above the uniform-guess loss. Default: ``0.1``.

    Example:
        >>> learning = History(train_loss=[float("nan"), 2.31])
        >>> rising = History(train_loss=[2.3, 2.6])
        >>> is_diverged(learning), is_diverged(rising)
        (False, True)
    """
    if history.diverged:
        return True
    final = history.train_loss[-1]
    return not math.isfinite(final) or final > (1.0 + tolerance) * math.log(num_classes)


def is_usable(runs: Sequence[History], target: float) -> bool:
    """Whether a learning rate is usable: no seed's run diverged (:func:`is_diverged`) and
    the mean over seeds of the final validation accuracy reached ``target``.

    .. math::
        \\text{usable} = \\neg \\exists s\\colon \\text{diverged}_s
        \\;\\wedge\\; \\frac{1}{S} \\sum_{s=1}^{S} a_s \\geq \\text{target}

    Args:
        runs: one finished run per seed at this learning rate, with validation accuracy.
        target: the validation accuracy the seeds must reach on average.

    Example:
        >>> ok = History(train_loss=[float("nan"), 0.3], val_accuracy=[0.1, 0.95])
        >>> stuck = History(train_loss=[float("nan"), 2.35], val_accuracy=[0.1, 0.1])
        >>> (is_usable([ok, ok], 0.9), is_usable([ok, stuck], 0.5),
        ...  is_usable([ok, stuck], 0.9))
        (True, True, False)
    """
    if not runs:
        raise ValueError("expected at least one run (got none)")
    if any(is_diverged(h) for h in runs):
        return False
    return bool(np.mean([h.final_val_accuracy for h in runs]) >= target)


def _run(losses: Sequence[float], accuracies: Sequence[float], diverged: bool = False
         ) -> History:
    """A finished run of ``len(losses)`` evaluations after step 0 (grading cases)."""
    steps = [50 * i for i in range(len(losses) + 1)]
    return History(steps=steps, train_loss=[float("nan"), *losses],
                   val_accuracy=[0.1, *accuracies], diverged=diverged)


def _usable_cases() -> list[tuple[str, list[History], float]]:
    """``(what it tests, runs, target)``: runs of three seeds that tell the rule apart from
    the plausible wrong ones (accuracy only, no 10 % margin, best instead of final
    accuracy, every seed on target, a training stopped by a non-finite loss)."""
    good = _run([1.0, 0.3], [0.8, 0.95])
    return [
        ("every seed on target", [good, _run([0.9, 0.35], [0.8, 0.93]),
                                  _run([1.1, 0.4], [0.7, 0.92])], 0.9),
        ("mean below the target", [good, good, _run([1.2, 0.7], [0.6, 0.75])], 0.9),
        ("one seed stuck near log 10 (not diverged), mean on target",
         [good, good, _run([2.31, 2.35], [0.1, 0.1])], 0.6),
        ("one seed confidently wrong: loss 13 % above log 10",
         [good, good, _run([0.8, 2.6], [0.9, 0.85])], 0.9),
        ("one seed stopped by a non-finite loss (History.diverged)",
         [good, good, _run([0.5, 0.4], [0.9, 0.93], diverged=True)], 0.9),
        ("final, not best, accuracy", [_run([0.3, 0.5], [0.97, 0.7])] * 3, 0.9),
        ("every seed on a low target", [good] * 3, 0.5),
    ]


def check_usable(fn: Callable[[Sequence[History], float], bool]) -> CheckResult:
    """Grade a reader's ``fn(runs, target) -> bool``, the rule of :func:`is_usable`.

    ``runs`` holds one :class:`~bnlib.experiments.train.History` per seed (10 classes); the
    answer must equal :func:`is_usable`'s on every grading case: runs built so that each
    plausible wrong rule (accuracy only, no 10 % margin above ``log 10``, the best instead
    of the final accuracy, every seed on target instead of the mean, ignoring
    ``History.diverged``, any non-finite loss including step 0's NaN) fails at least one.

    Args:
        fn: the reader's rule.

    Returns:
        A :class:`~bnlib.audit.CheckResult`; ``value`` is the number of cases answered
        wrongly, and ``evidence`` names each of them on a line of its own.

    Example:
        >>> check_usable(is_usable).evidence
        'PASSED: the rule agrees with is_usable on all 7 cases'
    """
    cases = _usable_cases()
    wrong = []
    for what, runs, target in cases:
        try:
            answer = fn(runs, target)
        except Exception as exc:  # the reader's code: report, do not crash the checker
            return CheckResult("usable", False, f"FAILED: raised {type(exc).__name__} on "
                               f"the case '{what}': {str(exc).splitlines()[0][:60]}",
                               float(len(cases)))
        if bool(answer) != is_usable(runs, target):
            wrong.append(f"\n  '{what}' (expected {is_usable(runs, target)})")
    if not wrong:
        return CheckResult("usable", True, f"PASSED: the rule agrees with is_usable on "
                           f"all {len(cases)} cases", 0.0)
    return CheckResult("usable", False, f"FAILED on {len(wrong)} of {len(cases)} cases:"
                       + "".join(wrong), float(len(wrong)))


def stable_range(lrs: np.ndarray, ok: np.ndarray) -> tuple[float, float] | None:
    """The longest run of consecutive grid points where ``ok`` holds, as ``(lr_min, lr_max)``.

    Args:
        lrs: ``(L,)`` increasing learning rates.
        ok: ``(L,)`` booleans.

    Returns:
        ``(lr_min, lr_max)`` of the longest contiguous stretch (the lower one on ties), or
        ``None`` when ``ok`` holds nowhere.

    Example:
        >>> lrs = np.array([0.01, 0.1, 1.0, 10.0])
        >>> stable_range(lrs, np.array([False, True, True, False]))
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

    def stable(self, norm: str) -> np.ndarray:
        """``(L,)``: no seed diverged."""
        return ~self.diverged[norm].any(axis=1)

    def usable(self, norm: str, target: float) -> np.ndarray:
        """``(L,)``: stable, and the mean final test accuracy over seeds is >= ``target``."""
        return self.stable(norm) & (self.final_test_accuracy[norm].mean(axis=1) >= target)

    def usable_range(self, norm: str, target: float) -> tuple[float, float] | None:
        """:func:`stable_range` of :meth:`usable`."""
        return stable_range(self.lrs, self.usable(norm, target))


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
        >>> r = lr_sweep([0.1, 1.0], norms=("batch",), seeds=(0,), steps=20,
        ...              eval_every=10)
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
        >>> from bnlib.experiments import Arm, choose_lr, load_digits_split, mlp
        >>> arm = Arm("bn", lambda: mlp(norm="batch", depth=1),
        ...           train_kwargs={"eval_every": 10})
        >>> choice = choose_lr(arm, load_digits_split(), 20, (0, 1))
        >>> table = sweep_from_choice(choice, 0.5)
        >>> table["accuracy"].shape
        (9, 2)
    """
    lrs = np.array(choice.grid)
    acc = np.array([[h.final_val_accuracy for h in choice.histories[lr]] for lr in choice.grid])
    div = np.array([[is_diverged(h) for h in choice.histories[lr]] for lr in choice.grid])
    usable = np.array([is_usable(choice.histories[lr], target) for lr in choice.grid])
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
    usable = is_usable(histories, target)
    return {"lrs": np.append(table["lrs"], lr),
            "accuracy": np.vstack([table["accuracy"], acc]),
            "diverged": np.vstack([table["diverged"], div]),
            "usable": np.append(table["usable"], usable)}
