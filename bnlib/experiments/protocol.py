"""The experiment protocol every comparison in the book follows.

- Data: train / validation / test (:func:`~bnlib.experiments.load_digits_split`);
  validation makes every choice, test is evaluated once per run, for the reported number.
- Each compared configuration (an :class:`Arm`) gets the initialization suited to its
  activation and its own learning rate, chosen on validation from one shared log grid
  (:data:`LR_GRID`) whose best point must lie strictly inside the grid (:func:`choose_lr`).
- At least 3 seeds, 5 when the effect is within 3x of the seed-to-seed spread
  (:func:`seeds_needed`); results are means with Student-t 95% intervals
  (:func:`interval`); overlapping intervals are "no measurable difference"
  (:meth:`Results.compare`).
- Steps-to-target are read at a resolution of at most 5% of the measured value
  (:func:`steps_to_target`).
- One runner, :func:`run`, trains every configuration x seed grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .data import Split
from .init import init_for_activation
from .train import History, accuracy, train

__all__ = ["LR_GRID", "Arm", "Comparison", "EdgeOfGridError", "Interval", "LrChoice",
           "ResolutionError", "Results", "choose_lr", "interval", "metric_value", "ratio_interval",
           "run", "seeds_needed",
           "steps_to_target"]

#: One shared learning-rate grid in half-decade steps, 0.001, 0.00316, 0.01, ..., 3.16, 10.
LR_GRID: tuple[float, ...] = tuple(10 ** (k / 2) for k in range(-6, 3))

#: Largest evaluation interval allowed, as a share of a measured steps-to-target.
RESOLUTION = 0.05


class EdgeOfGridError(ValueError):
    """The best learning rate lies at an end of the grid: widen the grid or the question."""


class ResolutionError(ValueError):
    """A steps-to-target was read at an evaluation interval above 5% of its value."""


# --------------------------------------------------------------------------- intervals
def _t_quantile(level: float, df: int) -> float:
    """The two-sided Student-t critical value ``t_{(1+level)/2, df}``."""
    from scipy import stats  # scipy ships with scikit-learn, which the experiments need

    return float(stats.t.ppf(0.5 + level / 2, df))


def _decimals(x: float, cap: int = 6) -> int:
    """Fewest decimals (at most ``cap``) that write ``x`` exactly (to 1e-9)."""
    for d in range(cap + 1):
        if abs(round(x, d) - x) < 1e-9 * max(1.0, abs(x)):
            return d
    return cap


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its two-sided confidence interval.

    Attributes:
        mean: the point estimate (the sample mean; for a ratio, the geometric mean).
        low, high: the interval's ends.
        n: number of values (seeds).
        values: the values themselves, in seed order.
        level: the confidence level. Default: ``0.95``.
    """

    mean: float
    low: float
    high: float
    n: int
    values: tuple[float, ...]
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def overlaps(self, other: "Interval") -> bool:
        """Whether the two intervals share a point (then: no measurable difference)."""
        return self.low <= other.high and other.low <= self.high

    def digits(self) -> int:
        """Decimals worth printing: the decimal position of the interval's half-width's
        first significant digit, :math:`d = \\max(0, -\\lfloor \\log_{10} h \\rfloor)`;
        when all values are equal (:math:`h = 0`), the fewest decimals that write the
        mean exactly (at most 6)."""
        h = self.half_width
        if not math.isfinite(h):
            return 0
        if h == 0:
            return _decimals(self.mean)
        return max(0, -math.floor(math.log10(h)))

    def format(self, digits: int | None = None, scale: float = 1.0) -> str:
        """``"0.93 (95% CI 0.92-0.94)"`` with ``digits`` decimals (default :meth:`digits`);
        ``scale`` multiplies every number first (e.g. ``100`` for percent)."""
        if digits is None:
            digits = Interval(self.mean * scale, self.low * scale, self.high * scale,
                              self.n, self.values, self.level).digits()
        m, lo, hi = (f"{v * scale:.{digits}f}" for v in (self.mean, self.low, self.high))
        return f"{m} ({self.level:.0%} CI {lo}-{hi})"

    def text(self, digits: int | None = None, scale: float = 1.0,
             bounds: tuple[float, float] | None = None) -> str:
        """``"93.7 (95% CI 92.7 to 94.7)"``: as :meth:`format`, but the interval's ends are
        joined by "to", which a negative end cannot make ambiguous, and with ``bounds``
        (the quantity's range, in scaled units, e.g. ``(0, 100)`` for percent) an end past
        the range is clipped to it and marked: ``"94 (95% CI 85 to 100, clipped)"``. A
        clipped interval says the Student-t interval does not describe these values well
        (an outlier among few seeds): report the values themselves too.

        Example:
            >>> interval([0.80, 0.97, 0.98]).text(scale=100, bounds=(0, 100))
            '92 (95% CI 67 to 100, clipped)'
            >>> interval([-0.1, 0.2, 0.3]).text()
            '0.1 (95% CI -0.4 to 0.7)'
        """
        if digits is None:
            digits = Interval(self.mean * scale, self.low * scale, self.high * scale,
                              self.n, self.values, self.level).digits()
        lo, hi = self.low * scale, self.high * scale
        clipped = False
        if bounds is not None:
            if not bounds[0] < bounds[1]:
                raise ValueError(f"expected bounds (low, high) with low < high (got {bounds})")
            clipped = lo < bounds[0] or hi > bounds[1]
            lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
        m, lo, hi = (f"{v:.{digits}f}" for v in (self.mean * scale, lo, hi))
        mark = ", clipped" if clipped else ""
        return f"{m} ({self.level:.0%} CI {lo} to {hi}{mark})"

    def __str__(self) -> str:
        return self.format()


def interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """The Student-t confidence interval of the mean of ``values``.

    .. math::
        \\bar x \\pm t_{(1+\\text{level})/2,\\,n-1} \\, s / \\sqrt{n},
        \\qquad s^2 = \\frac{1}{n-1} \\sum_i (x_i - \\bar x)^2 .

    Args:
        values: one value per seed, ``n >= 2``, all finite.
        level: confidence level. Default: ``0.95``.

    Example:
        >>> print(interval([0.91, 0.93, 0.95]))
        0.93 (95% CI 0.88-0.98)
    """
    xs = np.asarray(list(values), dtype=np.float64)
    if xs.ndim != 1 or len(xs) < 2:
        raise ValueError(f"an interval needs at least 2 values (got {len(xs)}): run more seeds")
    if not np.all(np.isfinite(xs)):
        raise ValueError(f"an interval needs finite values (got {xs.tolist()})")
    if not 0 < level < 1:
        raise ValueError(f"expected 0 < level < 1 (got {level})")
    mean = float(xs.mean())
    half = _t_quantile(level, len(xs) - 1) * float(xs.std(ddof=1)) / math.sqrt(len(xs))
    return Interval(mean, mean - half, mean + half, len(xs), tuple(float(v) for v in xs), level)


def ratio_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """The interval of the ratio ``a / b`` of paired positive values (same seeds): the
    Student-t interval of :math:`\\log(a_i / b_i)`, exponentiated; ``mean`` is the geometric
    mean of the ratios and ``values`` the ratios.

    Example:
        >>> r = ratio_interval([300, 320, 280], [100, 110, 100])
        >>> round(r.mean, 2), r.low < 2.9 < r.high
        (2.9, True)
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a ratio pairs values seed by seed (got {a.shape} and {b.shape})")
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("a ratio interval needs positive values")
    logs = interval(np.log(a / b), level)
    return Interval(math.exp(logs.mean), math.exp(logs.low), math.exp(logs.high), logs.n,
                    tuple(float(v) for v in a / b), level)


def seeds_needed(effect: float, spread: float) -> int:
    """Seeds a comparison needs: 5 when ``|effect|`` is within 3x of the seed-to-seed
    ``spread`` (standard deviation), else 3.

    Example:
        >>> seeds_needed(0.05, 0.02), seeds_needed(0.10, 0.02)
        (5, 3)
    """
    if spread < 0 or not math.isfinite(spread):
        raise ValueError(f"expected a finite spread >= 0 (got {spread})")
    return 5 if abs(effect) <= 3 * spread else 3


# --------------------------------------------------------------------------- metrics
def steps_to_target(history: History, target: float, metric: str = "val_accuracy"
                    ) -> int | None:
    """The first evaluated step at which ``metric`` reaches ``target`` (``None`` if never).

    Raises :class:`ResolutionError` when the run's evaluation interval exceeds 5% of the
    measured step count (then the number would carry more precision than was measured):
    evaluate more often.

    Example:
        >>> h = History(steps=[0, 5, 10, 100, 105], val_accuracy=[.1, .5, .6, .9, .95],
        ...             eval_every=5)
        >>> steps_to_target(h, 0.9)
        100
    """
    step = history.steps_to(target, metric)
    if step is None:
        return None
    if step == 0 or history.eval_every > RESOLUTION * step:
        raise ResolutionError(
            f"{metric} reached {target} at step {step} but evaluations are "
            f"{history.eval_every} steps apart (more than 5% of {step}): lower eval_every "
            f"to at most {max(1, math.floor(RESOLUTION * step))}")
    return step


def _lower_is_better(metric: str) -> bool:
    return metric.startswith("steps_to:") or metric.endswith("loss")


def metric_value(history: History, metric: str) -> float | None:
    """One run's value of ``metric``.

    Metrics: ``"test_accuracy"``, ``"final_val_accuracy"`` (also ``"val_accuracy"``),
    ``"mean_val_accuracy"`` (the mean over evaluations after step 0: rewards speed),
    ``"final_train_accuracy"``, ``"final_train_loss"`` (``inf`` when diverged),
    ``"steps_to:T"`` (validation accuracy reaching ``T``; ``"steps_to:T:train_accuracy"``
    for the training accuracy; ``None`` when never reached or diverged).
    """
    if metric == "test_accuracy":
        return history.final_test_accuracy
    if metric in ("final_val_accuracy", "val_accuracy"):
        return history.final_val_accuracy
    if metric == "mean_val_accuracy":
        if history.diverged:
            return 0.0
        return float(np.mean(history.val_accuracy[1:]))
    if metric == "final_train_accuracy":
        return 0.0 if history.diverged else history.train_accuracy[-1]
    if metric == "final_train_loss":
        return math.inf if history.diverged else history.train_loss[-1]
    if metric.startswith("steps_to:"):
        parts = metric.split(":")
        curve = parts[2] if len(parts) > 2 else "val_accuracy"
        if history.diverged:
            return None
        step = steps_to_target(history, float(parts[1]), curve)
        return None if step is None else float(step)
    raise ValueError(f"unknown metric {metric!r}: expected test_accuracy, final_val_accuracy, "
                     "mean_val_accuracy, final_train_accuracy, final_train_loss or steps_to:T")


# --------------------------------------------------------------------------- arms and lr
@dataclass(frozen=True)
class Arm:
    """One compared configuration.

    Attributes:
        name: its label (key of :class:`Results`).
        build: returns a fresh model; the runner seeds torch (``torch.manual_seed(seed)``)
            just before calling it.
        activation: when given, the runner applies
            :func:`~bnlib.experiments.init.init_for_activation` with it to the built model;
            ``None`` (default) keeps the model as ``build`` initialized it (``mlp`` and
            ``small_cnn`` initialize for their activation themselves).
        train_kwargs: extra arguments for :func:`~bnlib.experiments.train`
            (``batch_size``, ``momentum``, ``eval_every``, ...; not ``lr`` or ``seed``).

    Example:
        >>> from bnlib.experiments import mlp
        >>> arm = Arm("bn", lambda: mlp(norm="batch"), train_kwargs={"eval_every": 10})
        >>> arm.name
        'bn'
    """

    name: str
    build: Callable[[], nn.Module]
    activation: str | None = None
    train_kwargs: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {"lr", "seed", "split", "steps", "model"} & set(self.train_kwargs)
        if bad:
            raise ValueError(f"train_kwargs may not set {sorted(bad)}: the runner sets them")

    def fit(self, split: Split, steps: int, lr: float, seed: int, test: bool = True
            ) -> tuple[History, nn.Module]:
        """Seed, build, initialize and train one run; returns its history and model."""
        torch.manual_seed(seed)
        model = self.build()
        if self.activation is not None:
            init_for_activation(model, self.activation)
        history = train(model, split, steps, lr=lr, seed=seed, test=test,
                        **dict(self.train_kwargs))
        return history, model


@dataclass
class LrChoice:
    """The outcome of :func:`choose_lr`.

    Attributes:
        lr: the chosen learning rate.
        scores: ``{lr: Interval}`` of the metric on validation, ``None`` for a learning
            rate where some seed diverged or never reached a steps-to target.
        grid: the grid searched.
        metric: the metric the choice maximized (or minimized, for losses and steps).
        histories: ``{lr: [History per seed]}`` of every run made (test untouched).
    """

    lr: float
    scores: dict[float, Interval | None]
    grid: tuple[float, ...]
    metric: str
    histories: dict[float, list[History]] = field(default_factory=dict, repr=False)
    models: list[nn.Module] = field(default_factory=list, repr=False)

    def usable(self) -> list[float]:
        """Learning rates whose validation interval overlaps the chosen one's (no measurable
        difference from it), in grid order."""
        best = self.scores[self.lr]
        return [lr for lr, s in self.scores.items() if s is not None and s.overlaps(best)]

    def diverged(self) -> list[float]:
        """Learning rates at which at least one seed's loss became non-finite."""
        return [lr for lr, hs in self.histories.items() if any(h.diverged for h in hs)]


def choose_lr(arm: Arm, split: Split, steps: int, seeds: Sequence[int] = (0, 1, 2),
              grid: Sequence[float] = LR_GRID, metric: str = "val_accuracy",
              tie: str = "mean") -> LrChoice:
    """Train ``arm`` at every learning rate of ``grid`` and seed, and choose the learning
    rate with the best mean ``metric`` on validation (test is never touched).

    Raises :class:`~bnlib.experiments.protocol.EdgeOfGridError` when the best learning rate
    is the first or the last of the grid: the optimum may lie outside it. Ties go to the
    tied learning rate in the middle of the tied ones.

    ``tie`` says what to do with learning rates that are indistinguishable from the best
    (their intervals overlap the best one's, :meth:`LrChoice.usable`): ``"mean"`` keeps
    the best mean; ``"lower_bound"`` chooses, among them, the one whose interval has the
    best worst-case end (the highest lower bound; the lowest upper bound for losses and
    steps), so that a rate whose mean is carried by some seeds while another seed fails
    loses to a rate that works on every seed. Either way the best mean and the chosen
    rate must lie strictly inside the grid.

    Args:
        arm: the configuration.
        split: data with a validation set.
        steps: training steps per run.
        seeds: seeds per learning rate (>= 2). Default: ``(0, 1, 2)``.
        grid: increasing learning rates, a contiguous slice of
            :data:`~bnlib.experiments.protocol.LR_GRID` unless the question needs otherwise.
            Default: :data:`~bnlib.experiments.protocol.LR_GRID`.
        metric: see :func:`~bnlib.experiments.protocol.metric_value`. Default:
            ``"val_accuracy"`` (final).
        tie: ``"mean"`` or ``"lower_bound"``, see above. Default: ``"mean"``.

    Example:
        >>> from bnlib.experiments import load_digits_split, mlp
        >>> arm = Arm("bn", lambda: mlp(norm="batch", depth=1),
        ...           train_kwargs={"eval_every": 20})
        >>> c = choose_lr(arm, load_digits_split(), 20, seeds=(0, 1))
        >>> LR_GRID[0] < c.lr < LR_GRID[-1], sorted(c.scores) == sorted(LR_GRID)
        (True, True)
    """
    if split.x_val is None:
        raise ValueError("choose_lr needs a validation set: load_digits_split(val_fraction>0)")
    if tie not in ("mean", "lower_bound"):
        raise ValueError(f"expected tie 'mean' or 'lower_bound' (got {tie!r})")
    grid = tuple(float(g) for g in grid)
    if len(grid) < 3 or any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError(f"expected an increasing grid of at least 3 learning rates (got {grid})")
    lower = _lower_is_better(metric)
    scores: dict[float, Interval | None] = {}
    histories: dict[float, list[History]] = {}
    models: dict[float, list[nn.Module]] = {}
    for lr in grid:
        runs = [arm.fit(split, steps, lr, s, test=False) for s in seeds]
        histories[lr] = [h for h, _ in runs]
        models[lr] = [m for _, m in runs]
        values = [metric_value(h, metric) for h in histories[lr]]
        ok = all(v is not None and math.isfinite(v) for v in values)
        scores[lr] = interval(values) if ok else None
    valid = [lr for lr in grid if scores[lr] is not None]
    if not valid:
        raise ValueError(f"arm {arm.name!r}: no learning rate of the grid gave a finite "
                         f"{metric} on every seed")
    sign = -1.0 if lower else 1.0
    best_value = max(sign * scores[lr].mean for lr in valid)
    tied = [lr for lr in valid if sign * scores[lr].mean == best_value]
    best = tied[(len(tied) - 1) // 2]
    candidates = [best]
    if tie == "lower_bound":
        same = [lr for lr in valid if scores[lr].overlaps(scores[best])]
        worst_end = {lr: -scores[lr].high if lower else scores[lr].low for lr in same}
        top = max(worst_end.values())
        ends = [lr for lr in same if worst_end[lr] == top]
        candidates.append(ends[(len(ends) - 1) // 2])
    for lr in candidates:
        if lr in (grid[0], grid[-1]):
            end = "lowest" if lr == grid[0] else "highest"
            raise EdgeOfGridError(
                f"arm {arm.name!r}: the best learning rate {lr:g} ({metric} {scores[lr]}) "
                f"is the {end} of the grid, so the optimum may lie outside it: widen the grid")
    chosen = candidates[-1]
    return LrChoice(chosen, scores, grid, metric, histories, models[chosen])


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Comparison:
    """Arm ``a`` against arm ``b`` on one metric.

    Attributes:
        a, b: the arms' names.
        metric: the metric compared.
        a_interval, b_interval: each arm's :class:`Interval`.
        verdict: ``"a higher"``, ``"b higher"`` or ``"no measurable difference"``
            (the intervals overlap).
        ratio: the seed-paired ratio ``a / b`` as an :class:`Interval` (see
            :func:`ratio_interval`), ``None`` where some value is not positive.
    """

    a: str
    b: str
    metric: str
    a_interval: Interval
    b_interval: Interval
    verdict: str
    ratio: Interval | None


@dataclass
class Results:
    """What :func:`run` returns.

    Attributes:
        histories: ``{arm name: [History per seed]}``.
        lrs: ``{arm name: learning rate used}``.
        choices: ``{arm name: LrChoice}`` for arms whose learning rate was chosen.
        seeds: the seeds, in order.
        steps: training steps per run.
    """

    histories: dict[str, list[History]]
    lrs: dict[str, float]
    choices: dict[str, LrChoice]
    seeds: tuple[int, ...]
    steps: int

    def values(self, arm: str, metric: str) -> list[float]:
        """``metric`` for each seed of ``arm``; raises if a seed has no value (a
        steps-to target never reached, or a diverged run)."""
        if arm not in self.histories:
            raise KeyError(f"no arm {arm!r} (arms: {sorted(self.histories)})")
        out = []
        for seed, h in zip(self.seeds, self.histories[arm]):
            v = metric_value(h, metric)
            if v is None or not math.isfinite(v):
                why = "diverged" if h.diverged else "never reached the target"
                raise ValueError(f"arm {arm!r}, seed {seed}: {metric} has no value ({why}); "
                                 "train longer or ask a different question")
            out.append(v)
        return out

    def summary(self, metric: str) -> dict[str, Interval]:
        """``{arm name: Interval of metric over seeds}``."""
        return {arm: interval(self.values(arm, metric)) for arm in self.histories}

    def compare(self, a: str, b: str, metric: str) -> Comparison:
        """Compare arms ``a`` and ``b`` on ``metric``; see :class:`Comparison`."""
        va, vb = self.values(a, metric), self.values(b, metric)
        ia, ib = interval(va), interval(vb)
        if ia.overlaps(ib):
            verdict = "no measurable difference"
        else:
            verdict = "a higher" if ia.low > ib.high else "b higher"
        positive = min(va) > 0 and min(vb) > 0
        ratio = ratio_interval(va, vb) if positive else None
        return Comparison(a, b, metric, ia, ib, verdict, ratio)


def run(arms: Sequence[Arm], split: Split, steps: int, seeds: Sequence[int] = (0, 1, 2),
        lr: float | Mapping[str, float | None] | None = None, grid: Sequence[float] = LR_GRID,
        metric: str = "val_accuracy") -> Results:
    """Train every arm for every seed and evaluate each final model on test once.

    ``lr=None`` chooses each arm's learning rate with :func:`choose_lr` (same seeds,
    ``grid``, ``metric``) and keeps the runs at the chosen rate as the results (their test
    accuracy is evaluated then, once); a float gives every arm that rate; a dict gives
    each arm its own (``None`` entries are chosen).

    Args:
        arms: the configurations (distinct names).
        split: the data.
        steps: training steps per run.
        seeds: at least 2 seeds (the protocol asks for >= 3). Default: ``(0, 1, 2)``.
        lr: see above. Default: ``None``.
        grid, metric: for the choice. Default: :data:`~bnlib.experiments.protocol.LR_GRID`,
            ``"val_accuracy"``.

    Returns:
        :class:`Results`.

    Example:
        >>> from bnlib.experiments import load_digits_split, mlp
        >>> arms = [Arm(n, lambda n=n: mlp(norm=n, depth=1),
        ...             train_kwargs={"eval_every": 10}) for n in ("none", "batch")]
        >>> r = run(arms, load_digits_split(), steps=20, seeds=(0, 1), lr=0.1)
        >>> sorted(r.summary("test_accuracy")), r.lrs["batch"]
        (['batch', 'none'], 0.1)
    """
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be distinct (got {names})")
    seeds = tuple(int(s) for s in seeds)
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"expected at least 2 distinct seeds (got {seeds})")
    per_arm = dict(lr) if isinstance(lr, Mapping) else {n: lr for n in names}
    missing = set(names) - set(per_arm)
    if missing:
        raise ValueError(f"lr dict has no entry for {sorted(missing)}")
    histories: dict[str, list[History]] = {}
    lrs: dict[str, float] = {}
    choices: dict[str, LrChoice] = {}
    for arm in arms:
        chosen = per_arm[arm.name]
        if chosen is None:
            choice = choose_lr(arm, split, steps, seeds, grid, metric)
            choices[arm.name] = choice
            lrs[arm.name] = choice.lr
            hs = choice.histories[choice.lr]
            for h, model in zip(hs, choice.models):  # test touched once, for these runs
                h.test_accuracy = (0.0 if h.diverged
                                   else accuracy(model, split.x_test, split.y_test))
            choice.models = []
            histories[arm.name] = hs
        else:
            lrs[arm.name] = float(chosen)
            histories[arm.name] = [arm.fit(split, steps, float(chosen), s)[0] for s in seeds]
    return Results(histories, lrs, choices, seeds, steps)
