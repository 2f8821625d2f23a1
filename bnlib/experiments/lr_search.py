"""Choosing each arm's learning rate on a slice of the shared grid that widens when needed.

:func:`bnlib.experiments.protocol.run` chooses a learning rate on one grid and refuses a best
point at an end of it (:class:`~bnlib.experiments.protocol.EdgeOfGridError`). Searching the
whole :data:`~bnlib.experiments.protocol.LR_GRID` for every arm costs nine training runs per
seed; :func:`run_widening` starts each arm on a three-point slice and, when the best point
is at an end, adds the next grid point on that side and asks again, until the best point
lies strictly inside. Runs already made are reused (:class:`CachedArm`), so widening costs
only the new points. The answer is the one ``run`` would give on the final slice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from torch import nn

from .data import Split
from .protocol import LR_GRID, Arm, EdgeOfGridError, Results, run
from .train import History

__all__ = ["CachedArm", "nearest_grid_index", "run_widening"]


@dataclass(frozen=True)
class CachedArm(Arm):
    """An :class:`~bnlib.experiments.protocol.Arm` that remembers its runs.

    ``fit`` with the same split, steps, learning rate, seed and test flag returns the run
    made before (the same :class:`~bnlib.experiments.train.History` and model), so a
    widened search does not train again. ``runs`` maps ``(steps, lr, seed)`` to
    ``(history, model)``.

    Example:
        >>> from bnlib.experiments import load_digits_split, mlp
        >>> arm = CachedArm("bn", lambda: mlp(norm="batch", depth=1),
        ...                 train_kwargs={"eval_every": 5})
        >>> split = load_digits_split()
        >>> arm.fit(split, 5, 0.1, 0)[0] is arm.fit(split, 5, 0.1, 0)[0]
        True
    """

    runs: dict = field(default_factory=dict, compare=False, repr=False)

    def fit(self, split: Split, steps: int, lr: float, seed: int, test: bool = True
            ) -> tuple[History, nn.Module]:
        key = (id(split), steps, float(lr), int(seed))
        if key not in self.runs:
            self.runs[key] = super().fit(split, steps, lr, seed, test=False)
        history, model = self.runs[key]
        if test and history.test_accuracy is None:
            from .train import accuracy

            history.test_accuracy = (0.0 if history.diverged
                                     else accuracy(model, split.x_test, split.y_test))
        return history, model

    def model(self, split: Split, steps: int, lr: float, seed: int) -> nn.Module:
        """The trained model of a run made before (``KeyError`` if none)."""
        return self.runs[(id(split), steps, float(lr), int(seed))][1]


def nearest_grid_index(lr: float, grid: Sequence[float] = LR_GRID) -> int:
    """Index of the grid point nearest to ``lr`` on a log scale.

    Example:
        >>> nearest_grid_index(0.00625)  # LR_GRID[2] = 0.01
        2
    """
    if lr <= 0:
        raise ValueError(f"expected a positive learning rate (got {lr})")
    return min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / lr)))


def run_widening(arms: Sequence[CachedArm], split: Split, steps: int,
                 seeds: Sequence[int] = (0, 1, 2), start: dict[str, float] | float = 0.1,
                 grid: Sequence[float] = LR_GRID, metric: str = "val_accuracy") -> Results:
    """:func:`~bnlib.experiments.protocol.run` with each arm's learning rate chosen on a
    contiguous slice of ``grid`` that starts as the three points centred on the point
    nearest ``start`` and widens by one point on the side of an edge optimum.

    Args:
        arms: :class:`CachedArm` configurations (distinct names).
        split: data with a validation set.
        steps, seeds, metric: as :func:`~bnlib.experiments.protocol.run`.
            Defaults: seeds ``(0, 1, 2)``, metric ``"val_accuracy"``.
        start: the centre of the first slice, one for all arms or ``{name: lr}``.
            Default: ``0.1``.
        grid: the shared grid. Default: :data:`~bnlib.experiments.protocol.LR_GRID`.

    Returns:
        One :class:`~bnlib.experiments.protocol.Results` for all arms; ``choices[name].grid``
        is the final slice of each arm.

    Raises:
        ~bnlib.experiments.protocol.EdgeOfGridError: the best point is at an end of the whole
            grid.
    """
    grid = tuple(grid)
    merged: Results | None = None
    for arm in arms:
        if not isinstance(arm, CachedArm):
            raise TypeError(f"expected CachedArm (got {type(arm).__name__} for {arm.name!r})")
        centre = start[arm.name] if isinstance(start, dict) else start
        k = min(max(nearest_grid_index(centre, grid), 1), len(grid) - 2)
        lo, hi = k - 1, k + 1
        while True:
            try:
                result = run([arm], split, steps, seeds, grid=grid[lo:hi + 1], metric=metric)
                break
            except EdgeOfGridError:
                scores = _scores(arm, split, steps, seeds, grid[lo:hi + 1], metric)
                low_end = scores.index(max(scores)) == 0
                if (low_end and lo == 0) or (not low_end and hi == len(grid) - 1):
                    raise
                lo, hi = (lo - 1, hi) if low_end else (lo, hi + 1)
        if merged is None:
            merged = result
        else:
            merged.histories.update(result.histories)
            merged.lrs.update(result.lrs)
            merged.choices.update(result.choices)
    assert merged is not None, "expected at least one arm"
    return merged


def _scores(arm: CachedArm, split: Split, steps: int, seeds: Sequence[int],
            grid: Sequence[float], metric: str) -> list[float]:
    """Mean metric per grid point from the cached runs (for the widening direction)."""
    from .protocol import _lower_is_better, metric_value

    sign = -1.0 if _lower_is_better(metric) else 1.0
    out = []
    for lr in grid:
        values = [metric_value(arm.fit(split, steps, lr, s, test=False)[0], metric)
                  for s in seeds]
        ok = all(v is not None and math.isfinite(v) for v in values)
        out.append(sign * sum(values) / len(values) if ok else -math.inf)
    return out
