"""Ioffe & Szegedy (2015), Figure 1, at CPU scale.

The paper trains a network with three fully connected hidden layers of 100 sigmoid units on
MNIST with mini-batches of 60, with and without batch normalization, and plots (a) test
accuracy against training steps and (b, c) the 15th, 50th and 85th percentiles of the input
of one sigmoid in the last hidden layer over training. Here the data are scikit-learn's
bundled digits (8x8 images, 64 inputs); the network is :func:`~bnlib.experiments.mlp`
``64-100-100-100-10`` with sigmoid units, trained by plain SGD. The paper's setup as
reproduced here feeds pixel values in [0, 1] (``load_digits_split(scale="unit")``, like
MNIST's raw pixels), keeps PyTorch's default initialization and one learning rate for both
networks; the fair setup standardizes the inputs, initializes the plain network for its
sigmoids (Xavier normal, gain 4) and gives each network its own learning rate
(:mod:`bnlib.experiments.protocol`).

The tracked sigmoid input is recorded by a forward hook on the module that feeds the last
sigmoid: the ``BatchNorm1d`` (its output ``y = gamma * x_hat + beta``) in the BN network, the
``Linear`` layer (``W u + b``) in the plain one. The hook records only training forwards, so
the values are exactly what the sigmoid saw in each training step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .data import Split, load_digits_split
from .models import mlp
from .train import History, train

__all__ = ["IoffeRun", "SigmoidInputRecorder", "pooled_percentiles", "run_ioffe",
           "run_ioffe_seeds", "steps_to_target"]

PERCENTILES = (15.0, 50.0, 85.0)


def pooled_percentiles(values: np.ndarray, q: Sequence[float] = PERCENTILES, window: int = 10
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Percentiles of a per-step record, pooled over consecutive windows of steps.

    For the window starting at step ``t`` the percentiles are taken over all values of
    steps ``t, ..., t + window - 1`` (``window * batch`` numbers), which smooths the noise of a
    single batch without mixing distant points of training.

    Args:
        values: ``(T, B)`` the tracked value for each of ``B`` samples at each of ``T`` steps.
        q: percentiles in [0, 100]. Default: ``(15, 50, 85)``.
        window: steps pooled per point; ``T`` must be a multiple of it. Default: ``10``.

    Returns:
        ``(starts, p)``: ``starts`` ``(T // window,)`` the first step of each window and
        ``p`` ``(T // window, len(q))`` the percentiles.

    Example:
        >>> v = np.arange(40.0).reshape(4, 10)  # steps 0..3, 10 samples each
        >>> starts, p = pooled_percentiles(v, q=(0, 100), window=2)
        >>> starts.tolist(), p.tolist()
        ([0, 2], [[0.0, 19.0], [20.0, 39.0]])
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"expected 2D values (steps, batch) (got {values.ndim}D input)")
    if window < 1 or len(values) % window:
        raise ValueError(f"expected a window that divides the {len(values)} steps (got {window})")
    pooled = values.reshape(len(values) // window, -1)  # (T // window, window * B)
    p = np.percentile(pooled, q, axis=1).T  # (T // window, len(q))
    return np.arange(0, len(values), window), p


@dataclass
class IoffeRun:
    """One training run of the Figure 1 network.

    Attributes:
        norm: ``"none"`` or ``"batch"``.
        seed: seeds the initialization and the batch order.
        history: test and train accuracy against steps (:class:`~bnlib.experiments.History`).
        sigmoid_input: ``(steps, batch_size)`` the tracked last-hidden-layer sigmoid input,
            row ``t`` from the forward pass of update ``t + 1`` (row 0: before any update).
        unit: index of the tracked unit in the last hidden layer.
    """

    norm: str
    seed: int
    history: History
    sigmoid_input: np.ndarray
    unit: int

    def percentiles(self, q: Sequence[float] = PERCENTILES, window: int = 10
                    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`pooled_percentiles` of the ``sigmoid_input`` record."""
        return pooled_percentiles(self.sigmoid_input, q, window)


def _last_sigmoid_feeder(model: nn.Sequential) -> nn.Module:
    """The module whose output is the input of the last sigmoid."""
    index = max(i for i, m in enumerate(model) if isinstance(m, nn.Sigmoid))
    return model[index - 1]


class SigmoidInputRecorder:
    """A model builder for :class:`~bnlib.experiments.protocol.Arm` that records, for every
    model it builds, the input of one sigmoid of the last hidden layer in every training
    forward pass (a forward hook; evaluation passes are not recorded).

    Args:
        norm: ``"none"`` or ``"batch"``.
        init: ``"auto"`` or ``"default"`` (see :func:`~bnlib.experiments.mlp`).
        unit: the tracked unit of the last hidden layer. Default: ``0``.

    Example:
        >>> from bnlib.experiments import Arm, load_digits_split, run
        >>> rec = SigmoidInputRecorder("batch", "auto")
        >>> arm = Arm("bn", rec, train_kwargs={"eval_every": 5})
        >>> r = run([arm], load_digits_split(), steps=10, seeds=(0, 1), lr=0.1)
        >>> rec.values(1).shape  # (steps, batch) of the second model built (seed 1)
        (10, 60)
    """

    def __init__(self, norm: str, init: str, unit: int = 0) -> None:
        if not 0 <= unit < 100:
            raise ValueError(f"expected 0 <= unit < 100 (got {unit})")
        self.norm, self.init, self.unit = norm, init, unit
        self.records: list[list[Tensor]] = []

    def __call__(self) -> nn.Module:
        model = mlp(hidden=100, depth=3, activation="sigmoid", norm=self.norm, init=self.init)
        record: list[Tensor] = []
        self.records.append(record)
        unit = self.unit

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if module.training:
                record.append(output.detach()[:, unit].clone())  # (batch_size,)

        _last_sigmoid_feeder(model).register_forward_hook(hook)
        return model

    def values(self, index: int) -> np.ndarray:
        """``(steps, batch)`` the record of the ``index``-th model built."""
        return torch.stack(self.records[index]).numpy().astype(np.float64)


def run_ioffe(norm: str = "batch", seed: int = 0, steps: int = 1500, lr: float = 1.0,
              batch_size: int = 60, eval_every: int = 25, unit: int = 0,
              split: Split | None = None, init: str = "default") -> IoffeRun:
    """Train the 64-100-100-100-10 sigmoid MLP and record Figure 1's quantities.

    Args:
        norm: ``"batch"`` (BN before each sigmoid, Linear without bias) or ``"none"``.
            Default: ``"batch"``.
        seed: ``torch.manual_seed(seed)`` before building the model, and the batch order's
            seed. Default: ``0``.
        steps: SGD updates. Default: ``1500`` (about 72 epochs of the 1,258 training digits).
        lr: SGD learning rate, no momentum, no weight decay. Default: ``1.0``.
        batch_size: Default: ``60``, the paper's.
        eval_every: steps between test-accuracy evaluations. Default: ``25``.
        unit: which unit of the last hidden layer to track. Default: ``0``.
        split: the data; ``None`` loads ``load_digits_split(scale="unit")``.
        init: ``"default"`` (PyTorch's, the paper's setup here) or ``"auto"``
            (:func:`~bnlib.experiments.init.init_for_activation`). Default: ``"default"``.

    Returns:
        An :class:`IoffeRun`.

    Example:
        >>> run = run_ioffe("batch", steps=20, eval_every=10)
        >>> run.history.steps, run.sigmoid_input.shape
        ([0, 10, 20], (20, 60))
    """
    split = load_digits_split(scale="unit") if split is None else split
    torch.manual_seed(seed)
    model = mlp(in_features=split.num_features, hidden=100, depth=3,
                activation="sigmoid", norm=norm, init=init)
    if not 0 <= unit < 100:
        raise ValueError(f"expected 0 <= unit < 100 (got {unit})")
    records: list[Tensor] = []

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if module.training:  # evaluations run in eval mode and are not recorded
            records.append(output.detach()[:, unit].clone())  # (batch_size,)

    handle = _last_sigmoid_feeder(model).register_forward_hook(hook)
    try:
        history = train(model, split, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                        eval_every=eval_every)
    finally:
        handle.remove()
    values = torch.stack(records).numpy() if records else np.zeros((0, batch_size))
    return IoffeRun(norm, seed, history, values.astype(np.float64), unit)  # (steps, batch)


def run_ioffe_seeds(norms: Sequence[str] = ("none", "batch"), seeds: Sequence[int] = (0, 1, 2),
                    **kwargs) -> dict[str, list[IoffeRun]]:
    """:func:`run_ioffe` for every norm and seed, on one shared data split.

    Args:
        norms: Default: ``("none", "batch")``.
        seeds: Default: ``(0, 1, 2)``.
        **kwargs: passed to :func:`run_ioffe` (``steps``, ``lr``, ...).

    Returns:
        ``{norm: [run for each seed]}``.
    """
    split = kwargs.pop("split", None) or load_digits_split(scale="unit")
    return {norm: [run_ioffe(norm, seed, split=split, **kwargs) for seed in seeds]
            for norm in norms}


def steps_to_target(runs: Sequence[IoffeRun], target: float) -> list[int | None]:
    """For each run, the first evaluated step whose validation accuracy reaches ``target``
    (``None`` if it never does), read with the protocol's 5%-resolution rule
    (:func:`bnlib.experiments.protocol.steps_to_target`)."""
    from .protocol import steps_to_target as checked

    return [checked(run.history, target) for run in runs]
