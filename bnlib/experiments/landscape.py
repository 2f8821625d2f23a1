"""Santurkar et al. (2018), "How does batch normalization help optimization?", at digits scale.

Two experiments test the two explanations of why batch normalization (BN) helps:

* **Noisy BN** (their Figure 2). If BN worked by keeping the distribution of each layer's
  inputs fixed (reducing "internal covariate shift"), then moving that distribution on purpose
  at every step should undo the benefit. :class:`NoisyBatchNorm1d` applies BN and then a fresh
  random per-channel scale and shift at every training step; :func:`compare_noisy_bn` trains
  plain, BN and noisy-BN networks side by side.
* **The landscape along the gradient** (their Figure 4). :func:`gradient_landscape` steps from
  the current weights along the negative gradient with several step sizes and measures how much
  the loss varies and how much the gradient changes; :func:`landscape_during_training` does it
  at regular points of a training run.
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
from .train import History, train

__all__ = ["NoisyBatchNorm1d", "noisy_mlp", "PercentileTrace", "NoisyBNResult", "compare_noisy_bn",
           "gradient_landscape", "Landscape", "landscape_during_training"]


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
        histories: ``variant -> one History per seed`` for ``"none"``, ``"batch"``, ``"noisy"``.
        percentiles: ``variant -> (steps, 3)`` array: 15th/50th/85th percentiles of unit 0 of the
            last hidden layer's normalized output (the input of its activation) at every
            training step, first seed, for ``"batch"`` and ``"noisy"``.
    """

    histories: dict[str, list[History]]
    percentiles: dict[str, np.ndarray] = field(default_factory=dict)

    def test_accuracy(self, variant: str) -> np.ndarray:
        """``(seeds, evaluations)`` test accuracies of one variant."""
        return np.array([h.test_accuracy for h in self.histories[variant]])

    @property
    def steps(self) -> np.ndarray:
        return np.array(self.histories["batch"][0].steps)


def compare_noisy_bn(split: Split, seeds: Sequence[int] = (0, 1, 2), steps: int = 500,
                     lr: float = 0.5, batch_size: int = 60, scale_noise: float = 0.5,
                     shift_noise: float = 0.5, eval_every: int = 50, **mlp_kwargs
                     ) -> NoisyBNResult:
    """Train a plain MLP, the same MLP with BN, and with noisy BN, for each seed.

    Seed ``s`` initializes all three networks identically (``torch.manual_seed(s)`` before each)
    and orders the batches the same way; the noisy layers then draw from the global generator.

    Args:
        split: the data.
        seeds: one run per variant per seed. Default: ``(0, 1, 2)``.
        steps, lr, batch_size, eval_every: as :func:`bnlib.experiments.train`.
            Defaults: ``500``, ``0.5``, ``60``, ``50``.
        scale_noise, shift_noise: as :class:`NoisyBatchNorm1d`. Defaults: ``0.5``, ``0.5``.
        **mlp_kwargs: passed to :func:`bnlib.experiments.mlp` (``depth``, ``activation``, ...).

    Returns:
        A :class:`NoisyBNResult`.
    """
    builders = {"none": lambda: mlp(norm="none", **mlp_kwargs),
                "batch": lambda: mlp(norm="batch", **mlp_kwargs),
                "noisy": lambda: noisy_mlp(scale_noise, shift_noise, **mlp_kwargs)}
    result = NoisyBNResult({name: [] for name in builders})
    for k, seed in enumerate(seeds):
        for name, build in builders.items():
            torch.manual_seed(seed)
            model = build()
            trace = None
            if k == 0 and name != "none":
                last_norm = [m for m in model if isinstance(m, bt.BatchNorm1d)][-1]
                trace = PercentileTrace(last_norm)
            history = train(model, split, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                            eval_every=eval_every)
            result.histories[name].append(history)
            if trace is not None:
                trace.remove()
                result.percentiles[name] = np.array(trace.values)  # (steps, 3)
    return result


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
    """Measurements of :func:`landscape_during_training`, one row per measured step.

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


def landscape_during_training(model: nn.Module, split: Split, steps: int = 500, lr: float = 0.1,
                              step_sizes: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.4),
                              measure_every: int = 25, batch_size: int = 60, seed: int = 0,
                              eval_every: int = 50) -> Landscape:
    """Train ``model`` with :func:`bnlib.experiments.train` and measure
    :func:`gradient_landscape` every ``measure_every`` steps.

    Each measurement uses a fresh random training batch of ``batch_size`` samples drawn by its
    own generator (seeded by ``seed``), so measuring does not change the training run.

    Args:
        model: the classifier, initialized by the caller (seed it yourself).
        split: the data.
        steps, lr, batch_size, seed, eval_every: as :func:`bnlib.experiments.train`.
            Defaults: ``500``, ``0.1``, ``60``, ``0``, ``50``.
        step_sizes: the :math:`\\eta_k`. Default: ``(0.05, 0.1, 0.2, 0.3, 0.4)``.
        measure_every: steps between measurements. Default: ``25``.

    Returns:
        A :class:`Landscape`.
    """
    generator = torch.Generator().manual_seed(seed)
    rows: list[tuple[int, float, float, np.ndarray, np.ndarray]] = []

    def measure(step: int, net: nn.Module) -> None:
        if step % measure_every:
            return
        idx = torch.randperm(len(split.x_train), generator=generator)[:batch_size]
        loss, grad, losses, distances = gradient_landscape(
            net, split.x_train[idx], split.y_train[idx], step_sizes)
        rows.append((step, loss, float(torch.linalg.vector_norm(grad)), losses, distances))

    history = train(model, split, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                    eval_every=eval_every, on_step=measure)
    return Landscape(
        steps=np.array([r[0] for r in rows]), step_sizes=np.array(step_sizes, dtype=float),
        loss=np.array([r[1] for r in rows]), losses=np.array([r[3] for r in rows]),
        grad_norm=np.array([r[2] for r in rows]), distances=np.array([r[4] for r in rows]),
        history=history)
