"""Inference statistics during training: the running average, its bias-corrected version,
and precise statistics, measured on one training run.

A batch-norm layer's running mean follows PyTorch's update
:math:`r_t = (1 - \\alpha)\\, r_{t-1} + \\alpha\\, s_t` from :math:`r_0` (0 for the mean,
1 for the variance), where :math:`s_t` is the batch statistic of step :math:`t`. Unrolled,

.. math::

    r_t = (1 - \\alpha)^t\\, r_0 + \\sum_{k=1}^{t} \\alpha (1 - \\alpha)^{t-k} s_k ,

so it mixes two errors: the weight :math:`(1 - \\alpha)^t` still on the initial value
(*initialization bias*) and the weight on statistics of past networks (*lag*). Dividing the
sum by the weight it carries, :math:`1 - (1 - \\alpha)^t`, as Adam does for its moment
estimates (Kingma & Ba, 2015), removes the first and keeps the second:

.. math::

    \\tilde{r}_t = \\frac{r_t - (1 - \\alpha)^t\\, r_0}{1 - (1 - \\alpha)^t} .

Precise statistics (Wu & Johnson, 2021; :func:`bnlib.torch.recompute_bn_stats`) have
neither error. Because the momentum changes only the running statistics, never training,
one run can carry every momentum at once: :class:`RunningStatsTracker` records each layer's
batch statistics during training and keeps all the estimates side by side.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bnlib.torch.precise import batch_norm_layers, recompute_bn_stats

__all__ = ["ESTIMATORS", "InferenceStatsCurves", "InferenceStatsRuns", "RunningStatsTracker",
           "inference_stats_during_training", "inference_stats_over_seeds",
           "with_statistics"]

#: The estimators :func:`inference_stats_during_training` compares, as (name, description).
ESTIMATORS = {"ema": "running average as torch.nn keeps it",
              "corrected": "running average, bias-corrected",
              "precise": "precise statistics of the current weights"}


class RunningStatsTracker:
    """Keep, for several momenta, every batch-norm layer's running statistics and their
    bias-corrected version, from the batch statistics the layers see in training mode.

    The plain estimate follows ``torch.nn`` exactly (start at mean 0 and variance 1; the
    batch variance enters unbiased, divided by ``n - 1``), so at a layer's own momentum it
    equals that layer's ``running_mean`` and ``running_var`` (up to float32 rounding; the
    tracker computes in float64). The corrected estimate is
    :math:`(r_t - (1-\\alpha)^t r_0) / (1 - (1-\\alpha)^t)` (module docstring).

    Args:
        model: the network whose batch-norm layers (``torch.nn``'s or ``bnlib.torch``'s)
            to follow; a forward pre-hook is registered on each (remove with
            :meth:`remove`). Copies of the model (``copy.deepcopy``) are not followed.
        momenta: the momenta :math:`\\alpha` to keep, PyTorch's convention (weight of the
            new batch), each in (0, 1]. Default: ``(0.1, 0.01)``.

    Example:
        >>> bn = nn.BatchNorm1d(2)
        >>> tracker = RunningStatsTracker(bn, momenta=(0.1,))
        >>> _ = torch.manual_seed(0)
        >>> for _ in range(3):
        ...     _ = bn(torch.randn(8, 2) + 5.0)
        >>> mean, var = tracker.statistics(0.1, corrected=False)[0]
        >>> bool(torch.allclose(mean.float(), bn.running_mean))
        True
        >>> mean_c, _ = tracker.statistics(0.1, corrected=True)[0]
        >>> [round(v, 1) for v in mean_c.tolist()]  # no pull towards the initial 0
        [5.1, 5.0]
    """

    def __init__(self, model: nn.Module, momenta: tuple[float, ...] = (0.1, 0.01)) -> None:
        if not momenta or any(not 0.0 < m <= 1.0 for m in momenta):
            raise ValueError(f"expected momenta in (0, 1] (got {momenta!r})")
        self.layers = [m for m in batch_norm_layers(model) if m.track_running_stats]
        if not self.layers:
            raise ValueError("expected a model with at least one batch-norm layer that "
                             "tracks running statistics")
        self.momenta = tuple(float(m) for m in momenta)
        self.updates = [0] * len(self.layers)
        # _sums[momentum][layer] = (sum of alpha (1-alpha)^(t-k) mean_k, same for var)
        self._sums: dict[float, list[tuple[Tensor, Tensor] | None]] = {
            m: [None] * len(self.layers) for m in self.momenta}
        self._hooks = [layer.register_forward_pre_hook(self._hook(i, layer))
                       for i, layer in enumerate(self.layers)]

    def _hook(self, index: int, layer: nn.Module):
        def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            if module is not layer or not module.training:  # a deep copy, or eval mode
                return
            x = args[0].detach().to(torch.float64)
            x = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, N * prod(spatial))
            mean, var = x.mean(dim=1), x.var(dim=1, unbiased=True)  # (C,), (C,)
            for m in self.momenta:
                old = self._sums[m][index]
                if old is None:
                    self._sums[m][index] = (m * mean, m * var)
                else:
                    self._sums[m][index] = ((1 - m) * old[0] + m * mean,
                                            (1 - m) * old[1] + m * var)
            self.updates[index] += 1
        return record

    def remove(self) -> None:
        """Remove the hooks; the statistics kept so far stay available."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def statistics(self, momentum: float, corrected: bool) -> list[tuple[Tensor, Tensor]]:
        """Each followed layer's ``(mean, var)`` estimate (float64, shape ``(C,)``) for one
        of the tracked momenta: torch's running average (``corrected=False``) or its
        bias-corrected version (``corrected=True``)."""
        if momentum not in self.momenta:
            raise ValueError(f"expected one of the tracked momenta {self.momenta} "
                             f"(got {momentum})")
        out = []
        for index, layer in enumerate(self.layers):
            sums, t = self._sums[momentum][index], self.updates[index]
            c = layer.num_features
            zero = torch.zeros(c, dtype=torch.float64)
            if sums is None:  # no training step yet: torch's initial values
                out.append((zero, zero + 1.0))
                continue
            left = (1.0 - momentum) ** t  # weight still on the initial value
            if corrected:
                out.append((sums[0] / (1.0 - left), sums[1] / (1.0 - left)))
            else:
                out.append((sums[0], sums[1] + left))  # r_0: mean 0, variance 1
        return out


def with_statistics(model: nn.Module, stats: list[tuple[Tensor, Tensor]]) -> nn.Module:
    """A deep copy of ``model`` whose batch-norm layers (in module order, those that track
    running statistics) use ``stats`` as running mean and variance."""
    out = copy.deepcopy(model)
    layers = [m for m in batch_norm_layers(out) if m.track_running_stats]
    if len(layers) != len(stats):
        raise ValueError(f"expected statistics for {len(layers)} layers (got {len(stats)})")
    with torch.no_grad():
        for layer, (mean, var) in zip(layers, stats):
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
    return out


@dataclass
class InferenceStatsCurves:
    """Validation accuracy during one training run, with each kind of inference statistics.

    Attributes:
        steps: the training steps at which the model was measured.
        accuracy: ``accuracy[(estimator, momentum)]`` is the list of validation accuracies
            at ``steps``; estimator ``"ema"`` (torch's running average) or ``"corrected"``
            (bias-corrected) for each tracked momentum, and ``("precise", None)``.
    """

    steps: list[int] = field(default_factory=list)
    accuracy: dict[tuple[str, float | None], list[float]] = field(default_factory=dict)


def inference_stats_during_training(model: nn.Module, split, checkpoints: list[int],
                                    momenta: tuple[float, ...] = (0.1, 0.01),
                                    lr: float = 0.1, batch_size: int = 60, seed: int = 0
                                    ) -> InferenceStatsCurves:
    """Train ``model`` and measure, at each checkpoint, validation accuracy with three kinds
    of inference statistics: torch's running average and its bias-corrected version for
    every momentum in ``momenta``, and precise statistics recomputed over the training set
    (in batches of ``batch_size``) with that step's weights.

    Every measurement works on a copy, so training proceeds exactly as without it; the test
    set is not touched (report test numbers from a separate, final evaluation).

    Args:
        model: a classifier with batch-norm layers, freshly built (seed torch first).
        split: the data (:func:`bnlib.experiments.load_digits_split`); needs ``x_val``.
        checkpoints: training steps to measure at (> 0); training runs to the largest.
        momenta: momenta to compare, PyTorch's convention. Default: ``(0.1, 0.01)``.
        lr, batch_size, seed: passed to :func:`bnlib.experiments.train`.
            Defaults: ``0.1``, ``60``, ``0``.

    Returns:
        An :class:`InferenceStatsCurves`.
    """
    from .train import accuracy, train

    if split.x_val is None:
        raise ValueError("expected a split with a validation set (x_val)")
    if not checkpoints or min(checkpoints) < 1:
        raise ValueError(f"expected checkpoints >= 1 (got {checkpoints!r})")
    tracker = RunningStatsTracker(model, momenta)
    keys = [(kind, m) for kind in ("ema", "corrected") for m in tracker.momenta]
    curves = InferenceStatsCurves(accuracy={k: [] for k in keys + [("precise", None)]})
    x, n = split.x_train, len(split.x_train)
    train_batches = [x[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    wanted = set(checkpoints)

    def measure(step: int, net: nn.Module) -> None:
        if step not in wanted:
            return
        curves.steps.append(step)
        for kind, m in keys:
            probe = with_statistics(net, tracker.statistics(m, corrected=kind == "corrected"))
            curves.accuracy[(kind, m)].append(accuracy(probe, split.x_val, split.y_val))
        precise = copy.deepcopy(net)
        recompute_bn_stats(precise, train_batches)
        curves.accuracy[("precise", None)].append(accuracy(precise, split.x_val, split.y_val))

    try:
        train(model, split, steps=max(checkpoints), batch_size=batch_size, lr=lr, seed=seed,
              eval_every=max(checkpoints), on_step=measure, test=False,
              train_accuracy=False)
    finally:
        tracker.remove()
    return curves


@dataclass
class InferenceStatsRuns:
    """:func:`inference_stats_during_training` over several seeds.

    Attributes:
        steps: the checkpoints.
        seeds: the seeds, in order.
        curves: one :class:`InferenceStatsCurves` per seed.
        models: the trained models (after the last checkpoint), one per seed.
    """

    steps: list[int]
    seeds: tuple[int, ...]
    curves: list[InferenceStatsCurves]
    models: list[nn.Module]

    def values(self, estimator: str, momentum: float | None, step: int) -> list[float]:
        """Validation accuracy of ``(estimator, momentum)`` at ``step``, one per seed."""
        i = self.steps.index(step)
        return [c.accuracy[(estimator, momentum)][i] for c in self.curves]

    def interval(self, estimator: str, momentum: float | None, step: int):
        """The 95% interval over seeds (:func:`bnlib.experiments.protocol.interval`)."""
        from .protocol import interval

        return interval(self.values(estimator, momentum, step))

    def difference(self, a: tuple[str, float | None], b: tuple[str, float | None],
                   step: int):
        """The 95% interval of the seed-paired difference ``a - b`` at ``step``."""
        from .protocol import interval

        va, vb = self.values(*a, step), self.values(*b, step)
        return interval([x - y for x, y in zip(va, vb)])


def inference_stats_over_seeds(build, split, checkpoints: list[int],
                               seeds=(0, 1, 2), momenta: tuple[float, ...] = (0.1, 0.01),
                               lr: float = 0.1, batch_size: int = 60) -> InferenceStatsRuns:
    """Run :func:`inference_stats_during_training` for every seed: seed torch, build a
    fresh model with ``build()``, train it with the batch order of that seed.

    Choose ``lr`` on validation first (:func:`bnlib.experiments.protocol.choose_lr`); the
    same seed then reproduces the chosen run exactly.

    Example:
        >>> from bnlib.experiments import load_digits_split, mlp
        >>> build = lambda: mlp(norm="batch", depth=1)
        >>> runs = inference_stats_over_seeds(build, load_digits_split(), [5, 10],
        ...                                   seeds=(0, 1))
        >>> runs.steps, len(runs.values("precise", None, 10))
        ([5, 10], 2)
    """
    seeds = tuple(int(s) for s in seeds)
    curves, models = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build()
        curves.append(inference_stats_during_training(
            model, split, checkpoints, momenta=momenta, lr=lr, batch_size=batch_size,
            seed=seed))
        models.append(model)
    return InferenceStatsRuns(sorted(set(checkpoints)), seeds, curves, models)
