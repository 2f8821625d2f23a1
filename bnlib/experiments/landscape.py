"""Santurkar et al. (2018), "How does batch normalization help optimization?", at digits scale.

Two experiments test the two explanations of why batch normalization (BN) helps:

* **Noisy BN** (their Figure 2). If BN worked by keeping the distribution of each layer's
  inputs fixed (reducing "internal covariate shift"), then moving that distribution on purpose
  at every step should undo the benefit. :class:`NoisyBatchNorm1d` applies BN and then a fresh
  random per-channel scale and shift at every training step; :func:`compare_noisy_bn` trains
  plain, BN and noisy-BN networks side by side.
* **The landscape along the gradient** (their Figure 4). :func:`gradient_landscape` steps from
  the current weights along the negative gradient with several step sizes and measures how much
  the loss varies and how much the gradient changes; :class:`LandscapeRecorder` does it at
  regular points of a training run and :func:`compare_landscapes` for several arms and seeds.

Both comparisons follow :mod:`bnlib.experiments.protocol`: every arm has its own learning
rate (chosen on validation, or stated when the experiment reproduces a paper-style setup),
at least three seeds, and 95% intervals.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bnlib.torch as bt

from .data import Split
from .models import mlp
from .lr_search import CachedArm, run_widening
from .precision import cast_like
from .protocol import Arm, Results, ratio_interval, run
from .train import History, train

__all__ = ["NoisyBatchNorm1d", "noisy_mlp", "PercentileTrace", "NoisyBNResult", "compare_noisy_bn",
           "gradient_landscape", "Landscape", "LandscapeRecorder", "LandscapeComparison",
           "compare_landscapes"]


class NoisyBatchNorm1d(bt.BatchNorm1d):
    r"""Batch normalization followed by a random per-channel affine map, redrawn every step.

    In training mode each forward pass draws, for every channel :math:`c`, a scale and a shift

    .. math::
        s_c \sim \mathcal U(1 - a, 1 + a), \qquad b_c \sim \mathcal U(-d, d), \qquad
        y_{ic} = s_c \, \mathrm{BN}(x)_{ic} + b_c ,

    so the mean and standard deviation of every channel the next layer sees jump at every
    step: a non-stationary shift of the layer's input distribution injected on purpose, as in
    the "noisy BatchNorm" of Santurkar et al. (2018, Figure 2). Because
    :math:`\mathbb E[s_c] = 1` and :math:`\mathbb E[b_c] = 0`, evaluation mode applies no noise
    (like inverted dropout): the layer is then exactly :class:`bnlib.torch.BatchNorm1d`. The
    noise comes after BN, so the running statistics are those of plain BN. The draws use the
    global torch generator, as ``nn.Dropout`` does: ``torch.manual_seed`` makes them repeatable.

    The paper perturbs each activation of each sample with i.i.d. noise whose mean and variance
    change every step; this layer keeps the part that moves the distribution (per step and per
    channel) and leaves out per-sample noise, which would add a dropout-like regularizer.

    Args:
        num_features: ``C``.
        scale_noise: :math:`a`, half-width of the scale's range, in [0, 1). Default: ``0.5``.
        shift_noise: :math:`d`, half-width of the shift's range, >= 0. Default: ``0.5``.
        **kwargs: passed to :class:`bnlib.torch.BatchNorm1d` (``eps``, ``momentum``, ...).

    Attributes:
        last_scale: the ``(C,)`` scales drawn at the latest training step (``None`` before).
        last_shift: the ``(C,)`` shifts drawn at the latest training step (``None`` before).

    Shape:
        Input ``(N, C)`` or ``(N, C, L)``; output the same.

    Example:
        >>> layer = NoisyBatchNorm1d(4)
        >>> y = layer(torch.randn(16, 4))
        >>> torch.allclose(y.mean(dim=0), layer.last_shift, atol=1e-5)
        True
    """

    def __init__(self, num_features: int, scale_noise: float = 0.5, shift_noise: float = 0.5,
                 **kwargs) -> None:
        if not 0 <= scale_noise < 1:
            raise ValueError(f"expected 0 <= scale_noise < 1 (got {scale_noise})")
        if shift_noise < 0:
            raise ValueError(f"expected shift_noise >= 0 (got {shift_noise})")
        super().__init__(num_features, **kwargs)
        self.scale_noise, self.shift_noise = scale_noise, shift_noise
        self.last_scale: Tensor | None = None
        self.last_shift: Tensor | None = None

    def forward(self, input: Tensor) -> Tensor:
        y = super().forward(input)
        if not self.training:
            return y
        c = self.num_features
        options = {"dtype": y.dtype, "device": y.device}
        self.last_scale = 1 + self.scale_noise * (2 * torch.rand(c, **options) - 1)  # (C,)
        self.last_shift = self.shift_noise * (2 * torch.rand(c, **options) - 1)  # (C,)
        view = (1, c) + (1,) * (y.dim() - 2)  # broadcast over N (and L)
        return y * self.last_scale.view(view) + self.last_shift.view(view)

    def extra_repr(self) -> str:
        return (super().extra_repr()
                + f", scale_noise={self.scale_noise}, shift_noise={self.shift_noise}")


def noisy_mlp(scale_noise: float = 0.5, shift_noise: float = 0.5, **mlp_kwargs) -> nn.Sequential:
    """:func:`bnlib.experiments.mlp` with ``norm="batch"``, each BN replaced by
    :class:`NoisyBatchNorm1d` (same initial weights as ``mlp(norm="batch")`` under one seed).

    Example:
        >>> type(noisy_mlp(depth=2)[1]).__name__
        'NoisyBatchNorm1d'
    """
    model = mlp(norm="batch", **mlp_kwargs)
    for i, layer in enumerate(model):
        if isinstance(layer, bt.BatchNorm1d):
            noisy = NoisyBatchNorm1d(layer.num_features, scale_noise, shift_noise,
                                     eps=layer.eps, momentum=layer.momentum)
            noisy.load_state_dict(layer.state_dict())
            model[i] = noisy
    return model


class PercentileTrace:
    """Records percentiles of one unit of a module's output at every training-mode forward.

    This is what the next layer sees during training (Ioffe & Szegedy 2015, Figure 1b).

    Args:
        module: the module whose output to watch.
        unit: the feature (column) to watch. Default: ``0``.
        q: percentiles in [0, 100]. Default: ``(15, 50, 85)``.

    Attributes:
        values: one ``len(q)`` list per recorded forward pass.

    Example:
        >>> layer = nn.Identity()
        >>> trace = PercentileTrace(layer)
        >>> _ = layer(torch.arange(101.0).unsqueeze(1))
        >>> [round(v, 9) for v in trace.values[0]]
        [15.0, 50.0, 85.0]
    """

    def __init__(self, module: nn.Module, unit: int = 0, q: Sequence[float] = (15, 50, 85)
                 ) -> None:
        self.unit, self.q = unit, torch.tensor([p / 100 for p in q], dtype=torch.float64)
        self.values: list[list[float]] = []
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs, output: Tensor) -> None:
        if module.training:
            column = output.detach()[:, self.unit].double()  # (N,)
            self.values.append(torch.quantile(column, self.q).tolist())

    def remove(self) -> None:
        """Stop recording."""
        self.handle.remove()


@dataclass
class NoisyBNResult:
    """What :func:`compare_noisy_bn` returns.

    Attributes:
        results: the protocol's :class:`~bnlib.experiments.protocol.Results` for the arms
            ``"none"``, ``"batch"`` and ``"noisy"``, each at its own learning rate.
        percentiles: ``variant -> (steps, 3)`` array: 15th/50th/85th percentiles of unit 0 of the
            last hidden layer's normalized output (the input of its activation) at every
            training step, first seed, for ``"batch"`` and ``"noisy"``.
        early: with ``early_step``, the same runs stopped after ``early_step`` steps (same
            seeds, rates and batches) with their test accuracy there: training speed read on
            test, not on the validation split that chose the rates. ``None`` otherwise.
    """

    results: Results
    percentiles: dict[str, np.ndarray] = field(default_factory=dict)
    early: Results | None = None


def compare_noisy_bn(split: Split, seeds: Sequence[int] = (0, 1, 2), steps: int = 300,
                     batch_size: int = 60, scale_noise: float = 0.5, shift_noise: float = 0.5,
                     eval_every: int = 25, start: float = 0.3,
                     metric: str = "mean_val_accuracy",
                     report_seeds: Sequence[int] | None = None, early_step: int | None = None,
                     **mlp_kwargs) -> NoisyBNResult:
    """Train a plain MLP, the same MLP with BN, and with noisy BN, each at its own rate.

    Each arm's learning rate is chosen on validation by
    :func:`bnlib.experiments.lr_search.run_widening` (a slice of the shared grid around
    ``start`` that widens until its best point is inside); ``metric`` defaults to the mean
    validation accuracy over the run's evaluations, which rewards fast training as well as
    the final accuracy. Seed ``s`` initializes the three networks identically (for its
    activation, :func:`bnlib.experiments.mlp`) and orders the batches the same way; the
    noisy layers then draw from the global generator. Models are built in the dtype of the
    split's inputs (float64 with :func:`~bnlib.experiments.precision.double_split`, so that
    the runs reproduce on other CPUs). The percentiles are recorded by
    running seed ``seeds[0]`` again at the chosen rate (the same run, deterministic).

    The choice rewards the validation accuracy at every evaluation, so an early validation
    accuracy of the reported runs is read on the split that chose the rates. ``early_step``
    asks for the test accuracy after that many steps instead: every reported run is
    trained again for ``early_step`` steps at its rate, which (plain SGD at a constant rate,
    the same batches and noise draws) is the start of the long run; the function checks
    that the validation accuracies at ``early_step`` agree exactly.

    Args:
        split: the data, with a validation set.
        seeds: at least 3 for the protocol. Default: ``(0, 1, 2)``.
        steps, batch_size, eval_every: as :func:`bnlib.experiments.train`.
            Defaults: ``300``, ``60``, ``25``.
        scale_noise, shift_noise: as :class:`NoisyBatchNorm1d`. Defaults: ``0.5``, ``0.5``.
        start: centre of the first learning-rate slice. Default: ``0.3``.
        metric: the validation metric of the choice. Default: ``"mean_val_accuracy"``.
        report_seeds: the seeds whose runs at the chosen rates are reported (a superset of
            ``seeds``, see :func:`bnlib.experiments.batch_size.batch_size_sweep`). Default:
            ``None`` (= ``seeds``).
        early_step: a step of the run's evaluations (a multiple of ``eval_every`` below
            ``steps``) at which to read the test accuracy too, or ``None``. Default: ``None``.
        **mlp_kwargs: passed to :func:`bnlib.experiments.mlp` (``depth``, ``activation``, ...).

    Returns:
        A :class:`NoisyBNResult`.
    """
    if early_step is not None and not (0 < early_step < steps and early_step % eval_every == 0):
        raise ValueError(f"expected early_step a multiple of eval_every={eval_every} in "
                         f"(0, {steps}) (got {early_step})")
    builders = {"none": lambda: mlp(norm="none", **mlp_kwargs),
                "batch": lambda: mlp(norm="batch", **mlp_kwargs),
                "noisy": lambda: noisy_mlp(scale_noise, shift_noise, **mlp_kwargs)}
    kwargs = {"batch_size": batch_size, "eval_every": eval_every, "train_accuracy": False}
    builders = {name: cast_like(build, split) for name, build in builders.items()}
    arms = [CachedArm(name, build, train_kwargs=kwargs) for name, build in builders.items()]
    results = run_widening(arms, split, steps, seeds, start=start, metric=metric)
    if report_seeds is not None:
        chosen = results
        results = run(arms, split, steps, report_seeds, lr=dict(chosen.lrs))
        results.choices = chosen.choices
    out = NoisyBNResult(results)
    if early_step is not None:
        out.early = run(arms, split, early_step, results.seeds, lr=dict(results.lrs))
        for name, long_runs in results.histories.items():
            for seed, short, long in zip(results.seeds, out.early.histories[name], long_runs):
                if early_step in long.steps:  # (not when the long run diverged before)
                    same = short.val_accuracy[-1] == long.val_accuracy[long.steps.index(
                        early_step)]
                else:
                    same = short.diverged
                if not same:
                    raise RuntimeError(
                        f"arm {name!r}, seed {seed}: the {early_step}-step run is not the start "
                        f"of the {steps}-step run (another validation accuracy at step "
                        f"{early_step}): the training is not deterministic")
    for name in ("batch", "noisy"):
        torch.manual_seed(seeds[0])
        model = builders[name]()
        last_norm = [m for m in model if isinstance(m, bt.BatchNorm1d)][-1]
        trace = PercentileTrace(last_norm)
        train(model, split, steps=steps, lr=results.lrs[name], seed=seeds[0], test=False,
              **kwargs)
        trace.remove()
        out.percentiles[name] = np.array(trace.values)  # (steps, 3)
    return out


def _loss_and_gradient(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    return loss.item(), torch.cat([g.reshape(-1) for g in grads])  # (P,)


def gradient_landscape(model: nn.Module, x: Tensor, y: Tensor, step_sizes: Sequence[float]
                       ) -> tuple[float, Tensor, np.ndarray, np.ndarray]:
    r"""The loss and the gradient along the negative gradient direction from the current weights.

    With :math:`g = \nabla L(w)` on the batch ``(x, y)`` and step sizes :math:`\eta_k`,

    .. math::
        L_k = L(w - \eta_k g), \qquad \Delta_k = \lVert \nabla L(w) - \nabla L(w - \eta_k g)
        \rVert_2 ,

    Santurkar et al. (2018, Figure 4) call the spread of :math:`L_k` the loss landscape's
    variation and :math:`\Delta_k` the gradient predictiveness (small is predictive). The model is
    evaluated in its current mode (training mode: BN uses the batch statistics) on a copy, so
    neither its weights nor its running statistics change.

    Args:
        model: a classifier returning logits.
        x, y: the batch.
        step_sizes: the :math:`\eta_k`, each > 0.

    Returns:
        ``(loss, gradient, losses, distances)``: :math:`L(w)`, :math:`g` flattened ``(P,)``,
        the :math:`L_k` ``(K,)`` and the :math:`\Delta_k` ``(K,)``.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        >>> loss, g, losses, dist = gradient_landscape(model, x, y, [0.1, 0.2])
        >>> losses.shape, bool((dist >= 0).all())
        ((2,), True)
    """
    if len(step_sizes) == 0 or min(step_sizes) <= 0:
        raise ValueError(f"expected positive step sizes (got {list(step_sizes)})")
    probe = copy.deepcopy(model)
    params = [p for p in probe.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    buffers = {k: v.clone() for k, v in probe.named_buffers()}
    loss, grad = _loss_and_gradient(probe, x, y)
    losses, distances = [], []
    for eta in step_sizes:
        with torch.no_grad():
            offset = 0
            for p, p0 in zip(params, start):
                p.copy_(p0 - eta * grad[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
            for name, b in probe.named_buffers():  # same running statistics at every point
                b.copy_(buffers[name])
        loss_k, grad_k = _loss_and_gradient(probe, x, y)
        losses.append(loss_k)
        distances.append(float(torch.linalg.vector_norm(grad - grad_k)))
    return loss, grad, np.array(losses), np.array(distances)


@dataclass
class Landscape:
    """Measurements of a :class:`LandscapeRecorder`, one row per measured step.

    Attributes:
        steps: ``(M,)`` training steps after which the landscape was measured.
        step_sizes: ``(K,)`` the step sizes :math:`\\eta_k`.
        loss: ``(M,)`` loss at the current weights.
        losses: ``(M, K)`` loss at the stepped weights.
        grad_norm: ``(M,)`` :math:`\\lVert g \\rVert_2`.
        distances: ``(M, K)`` gradient changes :math:`\\Delta_k`.
        history: the training run.
    """

    steps: np.ndarray
    step_sizes: np.ndarray
    loss: np.ndarray
    losses: np.ndarray
    grad_norm: np.ndarray
    distances: np.ndarray
    history: History

    @property
    def loss_range(self) -> np.ndarray:
        """``(M,)`` max minus min of the loss over the current and the stepped points."""
        all_losses = np.column_stack([self.loss, self.losses])  # (M, K + 1)
        return all_losses.max(axis=1) - all_losses.min(axis=1)

    @property
    def predictiveness(self) -> np.ndarray:
        """``(M,)`` largest gradient change :math:`\\max_k \\Delta_k` (smaller is more
        predictive)."""
        return self.distances.max(axis=1)

    @property
    def beta_smoothness(self) -> np.ndarray:
        r"""``(M,)`` effective :math:`\beta`-smoothness: the largest gradient change per unit
        distance moved, :math:`\max_k \Delta_k / (\eta_k \lVert g \rVert_2)`."""
        moved = self.step_sizes[None, :] * self.grad_norm[:, None]  # (M, K)
        return (self.distances / moved).max(axis=1)


class LandscapeRecorder:
    """An ``on_step`` callback that measures :func:`gradient_landscape` during training.

    Every ``measure_every`` steps it measures the landscape at the current weights on a
    fresh random training batch of ``batch_size`` samples, drawn by its own generator, so
    measuring does not change the training run. A run starts a new trace at step 1, so one
    recorder serves every seed of a :func:`bnlib.experiments.protocol.run` (trace ``i`` is
    the ``i``-th run; its generator is seeded with ``seed + i``).

    Args:
        split: the data (its training part is sampled).
        step_sizes: the :math:`\\eta_k`. Default: ``(0.05, 0.1, 0.2, 0.3, 0.4)``.
        measure_every: steps between measurements. Default: ``20``.
        batch_size: samples per measured batch. Default: ``60``.
        seed: seed of the first trace's generator. Default: ``0``.

    Example:
        >>> from bnlib.experiments import load_digits_split, mlp
        >>> split = load_digits_split()
        >>> rec = LandscapeRecorder(split, (0.1,), measure_every=5)
        >>> _ = train(mlp(depth=1), split, steps=10, eval_every=10, on_step=rec)
        >>> rec.landscapes()[0].steps.tolist()
        [5, 10]
    """

    def __init__(self, split: Split, step_sizes: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.4),
                 measure_every: int = 20, batch_size: int = 60, seed: int = 0) -> None:
        if measure_every < 1:
            raise ValueError(f"expected measure_every >= 1 (got {measure_every})")
        self.split, self.step_sizes = split, tuple(float(e) for e in step_sizes)
        self.measure_every, self.batch_size, self.seed = measure_every, batch_size, seed
        self.traces: list[list[tuple[int, float, float, np.ndarray, np.ndarray]]] = []
        self._generator: torch.Generator | None = None

    def __call__(self, step: int, model: nn.Module) -> None:
        if step == 1:
            self.traces.append([])
            self._generator = torch.Generator().manual_seed(self.seed + len(self.traces) - 1)
        if step % self.measure_every:
            return
        x, y = self.split.x_train, self.split.y_train
        idx = torch.randperm(len(x), generator=self._generator)[:self.batch_size]
        loss, grad, losses, distances = gradient_landscape(model, x[idx], y[idx],
                                                           self.step_sizes)
        self.traces[-1].append((step, loss, float(torch.linalg.vector_norm(grad)), losses,
                                distances))

    def landscapes(self) -> list[Landscape]:
        """One :class:`Landscape` per recorded run (``history`` left ``None``)."""
        return [Landscape(
            steps=np.array([r[0] for r in rows]), step_sizes=np.array(self.step_sizes),
            loss=np.array([r[1] for r in rows]), losses=np.array([r[3] for r in rows]),
            grad_norm=np.array([r[2] for r in rows]), distances=np.array([r[4] for r in rows]),
            history=None) for rows in self.traces]


@dataclass
class LandscapeComparison:
    """What :func:`compare_landscapes` returns.

    Attributes:
        results: the protocol's :class:`~bnlib.experiments.protocol.Results` of the runs.
        landscapes: ``arm -> one Landscape per seed``.
    """

    results: Results
    landscapes: dict[str, list[Landscape]]

    def phase_means(self, arm: str, metric: str, first: int, last: int) -> np.ndarray:
        """``(seeds,)`` mean of ``metric`` (a :class:`Landscape` attribute such as
        ``"loss_range"``) over the measurements at steps ``first`` to ``last``."""
        out = []
        for land in self.landscapes[arm]:
            keep = (land.steps >= first) & (land.steps <= last)
            if not keep.any():
                raise ValueError(f"no measurement between steps {first} and {last}")
            out.append(float(getattr(land, metric)[keep].mean()))
        return np.array(out)

    def ratio(self, a: str, b: str, metric: str, first: int, last: int):
        """Seed-paired ratio ``a / b`` of :meth:`phase_means` as an
        :class:`~bnlib.experiments.protocol.Interval` (geometric mean, 95% interval)."""
        return ratio_interval(self.phase_means(a, metric, first, last),
                              self.phase_means(b, metric, first, last))


def compare_landscapes(split: Split, builders: dict, lrs: dict[str, float], steps: int = 300,
                       seeds: Sequence[int] = (0, 1, 2), batch_size: int = 60,
                       step_multiples: Sequence[float] = (0.5, 1.0, 2.0, 3.0, 4.0),
                       measure_every: int = 20, eval_every: int = 25) -> LandscapeComparison:
    """Train each arm at its learning rate with :func:`bnlib.experiments.protocol.run` and
    measure the landscape along the gradient every ``measure_every`` steps.

    The step sizes are multiples of each arm's own learning rate,
    :math:`\\eta_k = m_k \\, \\eta_{\\text{train}}`: the landscape is probed over the steps
    the optimizer actually takes (half to four training steps by default). Models are built
    in the dtype of the split's inputs (see :mod:`bnlib.experiments.precision`).

    Args:
        split: the data.
        builders: ``arm -> callable returning a fresh model``.
        lrs: ``arm -> learning rate`` (chosen on validation by the caller, or shared).
        steps, seeds, batch_size, eval_every: as :func:`bnlib.experiments.protocol.run`.
            Defaults: ``300``, ``(0, 1, 2)``, ``60``, ``25``.
        step_multiples: the :math:`m_k`. Default: ``(0.5, 1, 2, 3, 4)``.
        measure_every: steps between measurements. Default: ``20``.

    Returns:
        A :class:`LandscapeComparison`.
    """
    recorders = {name: LandscapeRecorder(split, [m * lrs[name] for m in step_multiples],
                                         measure_every, batch_size, seed=1000)
                 for name in builders}
    kwargs = {"batch_size": batch_size, "eval_every": eval_every, "train_accuracy": False}
    arms = [Arm(name, cast_like(build, split), train_kwargs={**kwargs, "on_step": recorders[name]})
            for name, build in builders.items()]
    results = run(arms, split, steps, seeds, lr=dict(lrs))
    return LandscapeComparison(results, {n: r.landscapes() for n, r in recorders.items()})
