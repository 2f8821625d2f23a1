r"""Chapter 5's vision comparison: the small CNN on the 8x8 digits with and without
``BatchNorm2d``, under the protocol of ``bnlib.experiments.protocol``, and the
generalization gap measured at matched fit.

Each arm is the same CNN (Kaiming initialization for its ReLU blocks, standardized inputs)
with or without BN; :func:`cnn_arm` builds it. The learning rate of each arm is chosen on
validation by ``bnlib.experiments.protocol.choose_lr``, and
``bnlib.experiments.protocol.run`` trains the seeds.

The gap between fitting and generalizing is measured in evaluation mode, with whatever
statistics the BN layers hold (after :class:`PreciseEval`, statistics recomputed with the
current weights), as a gap in accuracy and as a gap in cross-entropy:

.. math::

    \text{gap}_{\text{acc}} = \text{acc}_{\text{train}} - \text{acc}_{\text{test}},
    \qquad
    \text{gap}_{\text{loss}} = L_{\text{test}} - L_{\text{train}}.

Evaluation mode uses the running averages kept during training. At a high learning rate
the weights move quickly, the averages lag behind them, and a well-trained network can
evaluate badly. :class:`PreciseEval` recomputes the statistics with the current weights
before every evaluation (precise statistics, Wu & Johnson 2021) and records what the
running averages as trained would have given.

A gap compared between two networks means little unless both fit their training set
equally well. :class:`MatchedFit` records the gap of each run at the first check where its
training cross-entropy (evaluation mode, whole training set) is at most a threshold, so
both arms are compared at the same training loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlib.torch.precise import batch_norm_layers, recompute_bn_stats

from .data import Split
from .models import small_cnn
from .protocol import Arm
from .train import History, accuracy

__all__ = ["FitRecord", "Gap", "MatchedFit", "PreciseEval", "cnn_arm", "measure_gap",
           "stack"]


@dataclass(frozen=True)
class Gap:
    """Train and test accuracy and cross-entropy of a trained model, in evaluation mode.

    Attributes:
        train_accuracy: accuracy on the training set, in [0, 1].
        test_accuracy: accuracy on the test set, in [0, 1].
        train_loss: mean cross-entropy on the training set, in nats.
        test_loss: mean cross-entropy on the test set, in nats.
    """

    train_accuracy: float
    test_accuracy: float
    train_loss: float
    test_loss: float

    @property
    def accuracy_gap(self) -> float:
        """``train_accuracy - test_accuracy``: positive when the model fits the training set
        better than it generalizes."""
        return self.train_accuracy - self.test_accuracy

    @property
    def loss_gap(self) -> float:
        """``test_loss - train_loss`` in nats."""
        return self.test_loss - self.train_loss


@torch.no_grad()
def mean_cross_entropy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Mean cross-entropy (nats) of ``model`` on ``(x, y)`` in evaluation mode (the
    model's mode is restored after)."""
    was_training = model.training
    model.eval()
    loss = F.cross_entropy(model(x), y).item()
    model.train(was_training)
    return loss


def measure_gap(model: nn.Module, split: Split) -> Gap:
    """Accuracy and cross-entropy on the training and the test set, in evaluation mode
    (the model's mode is restored after). This touches the test set: call it once per
    reported number.

    Example:
        >>> from bnlib.experiments import load_digits_split
        >>> split = load_digits_split(images=True)
        >>> gap = measure_gap(small_cnn(channels=4), split)
        >>> 0.0 <= gap.train_accuracy <= 1.0
        True
    """
    return Gap(train_accuracy=accuracy(model, split.x_train, split.y_train),
               test_accuracy=accuracy(model, split.x_test, split.y_test),
               train_loss=mean_cross_entropy(model, split.x_train, split.y_train),
               test_loss=mean_cross_entropy(model, split.x_test, split.y_test))


@dataclass(frozen=True)
class FitRecord:
    """One run's gap at matched fit.

    Attributes:
        step: the first checked step at which the training loss was at most the threshold.
        gap: the :class:`Gap` measured at that step.
    """

    step: int
    gap: Gap


@dataclass
class MatchedFit:
    """An ``on_step`` callback for :func:`~bnlib.experiments.train` that records each
    run's :class:`Gap` when its training loss first reaches ``threshold``.

    Every ``check_every`` steps it computes the evaluation-mode cross-entropy on the whole
    training set; at the first check where it is at most ``threshold`` it measures the gap
    (:func:`measure_gap`, the run's one look at the test set for this question). A run
    starts when the callback sees step 1, so one callback serves every seed of an arm, in
    order; ``records[i]`` is ``None`` while (or if) run ``i`` never reached the threshold.

    With ``final_step`` set, it also measures each run's gap at that step (the end of
    the budget) into ``final``; the test accuracy there is the one
    :func:`~bnlib.experiments.train` reports, computed on the same model.

    Called by a :class:`PreciseEval` (its ``then``), it measures with recomputed batch-norm
    statistics only at that callback's evaluation steps: choose ``check_every`` a multiple
    of its ``eval_every``, or the checks in between use the running averages of training.

    Args:
        split: the data (training set for the loss, test set for the gap).
        threshold: training cross-entropy in nats. Default: ``0.05``.
        check_every: steps between checks (the resolution of the matched step).
            Default: ``10``.
        final_step: the step at which to measure the end-of-budget gap, or ``None``.
            Default: ``None``.

    Example:
        >>> from bnlib.experiments import load_digits_split, train
        >>> split = load_digits_split(images=True)
        >>> fit = MatchedFit(split, threshold=10.0, check_every=5)
        >>> _ = torch.manual_seed(0)
        >>> _ = train(small_cnn(channels=4), split, steps=10, on_step=fit,
        ...           eval_every=10)
        >>> fit.records[0].step
        5
    """

    split: Split
    threshold: float = 0.05
    check_every: int = 10
    final_step: int | None = None
    records: list[FitRecord | None] = field(default_factory=list)
    final: list[Gap] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"expected a threshold > 0 nats (got {self.threshold})")
        if self.check_every < 1:
            raise ValueError(f"expected check_every >= 1 (got {self.check_every})")

    def __call__(self, step: int, model: nn.Module) -> None:
        if step == 1:
            self.records.append(None)
        if not self.records:
            raise RuntimeError("MatchedFit saw a run that did not start at step 1")
        if step == self.final_step:
            self.final.append(measure_gap(model, self.split))
        if self.records[-1] is not None or step % self.check_every:
            return
        loss = mean_cross_entropy(model, self.split.x_train, self.split.y_train)
        if loss <= self.threshold:
            self.records[-1] = FitRecord(step, measure_gap(model, self.split))

    def reached(self) -> list[FitRecord]:
        """The records of every run; raises if some run never reached the threshold."""
        missing = [i for i, r in enumerate(self.records) if r is None]
        if missing or not self.records:
            raise ValueError(f"runs {missing} never reached a training loss of "
                             f"{self.threshold} nats: train longer or raise the threshold")
        return list(self.records)  # type: ignore[arg-type]


@dataclass
class PreciseEval:
    """An ``on_step`` callback for :func:`~bnlib.experiments.train` that evaluates with
    precise batch-norm statistics.

    Just before each evaluation of :func:`~bnlib.experiments.train` (every ``eval_every``
    steps and at step ``steps``) it

    1. records the validation accuracy with the running averages as trained in
       ``ema_val`` (and, at step ``steps``, the test accuracy in ``ema_test``);
    2. recomputes every batch-norm layer's statistics over the training set in batches of
       ``batch_size`` with the current weights
       (:func:`bnlib.torch.recompute_bn_stats`), so that the evaluation that follows
       uses them;
    3. puts the running averages of training back before the next training step, so that
       training, and the averages it keeps, are exactly those of a run without it.

    A model without batch norm evaluates identically either way. ``then`` (e.g. a
    :class:`MatchedFit`) is called after, and so measures with the precise statistics.
    A run starts when the callback sees step 1; ``ema_val[i]`` belongs to run ``i``.

    Args:
        split: the data (training set for the statistics).
        steps: the run's number of steps.
        eval_every: the run's evaluation interval.
        batch_size: batch size of the recomputation. Default: ``60``.
        then: another callback, called after this one. Default: ``None``.

    Example:
        >>> from bnlib.experiments import load_digits_split, train
        >>> split = load_digits_split(images=True)
        >>> precise = PreciseEval(split, steps=10, eval_every=5)
        >>> _ = torch.manual_seed(0)
        >>> h = train(small_cnn("batch", channels=4), split, 10, on_step=precise,
        ...           eval_every=5)
        >>> len(precise.ema_val[0]), len(precise.ema_test)
        (2, 1)
    """

    split: Split
    steps: int
    eval_every: int
    batch_size: int = 60
    then: Callable[[int, nn.Module], None] | None = None
    ema_val: list[list[float]] = field(default_factory=list)
    ema_test: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_every < 1 or self.batch_size < 2:
            raise ValueError(f"expected steps >= 1, eval_every >= 1, batch_size >= 2 (got "
                             f"{self.steps}, {self.eval_every}, {self.batch_size})")

    def __call__(self, step: int, model: nn.Module) -> None:
        if step == 1:
            self.ema_val.append([])
        if not self.ema_val:
            raise RuntimeError("PreciseEval saw a run that did not start at step 1")
        if step % self.eval_every == 0 or step == self.steps:
            split = self.split
            self.ema_val[-1].append(accuracy(model, split.x_val, split.y_val))
            if step == self.steps:
                self.ema_test.append(accuracy(model, split.x_test, split.y_test))
            self._recompute(model)
        if self.then is not None:
            self.then(step, model)

    def _recompute(self, model: nn.Module) -> None:
        layers = [m for m in batch_norm_layers(model) if m.track_running_stats]
        if not layers:
            return
        kept = {m: [b.detach().clone() for b in self._buffers(m)] for m in layers}
        recompute_bn_stats(model, self.split.x_train.split(self.batch_size))

        def restore(module: nn.Module, args: tuple) -> None:
            if module.training:  # the next training step: the averages of training back
                with torch.no_grad():
                    for buf, old in zip(self._buffers(module), kept[module]):
                        buf.copy_(old)
                handles.pop(module).remove()

        handles = {m: m.register_forward_pre_hook(restore) for m in layers}

    @staticmethod
    def _buffers(module: nn.Module) -> list[Tensor]:
        return [module.running_mean, module.running_var, module.num_batches_tracked]


def cnn_arm(norm: str, channels: int = 8, momentum: float = 0.9, eval_every: int = 25,
            init: str = "auto", name: str | None = None,
            dtype: torch.dtype = torch.float32, **train_kwargs) -> Arm:
    """The small CNN (:func:`~bnlib.experiments.small_cnn`) as a protocol
    ``bnlib.experiments.protocol.Arm``, trained with SGD and momentum.

    Args:
        norm: ``"none"`` or ``"batch"`` (any name of :func:`~bnlib.experiments.make_norm`).
        channels: width ``C`` of the CNN. Default: ``8``.
        momentum: SGD momentum. Default: ``0.9``.
        eval_every: steps between evaluations. Default: ``25``.
        init: ``"auto"`` (Kaiming normal for the ReLU blocks) or ``"default"``
            (PyTorch's). Default: ``"auto"``.
        name: the arm's name. Default: ``norm``.
        dtype: the model's floating dtype; ``torch.float64`` (with inputs from
            :func:`~bnlib.experiments.precision.double_split`) keeps runs from amplifying
            the last-bit differences of other CPU kernels (see
            :mod:`bnlib.experiments.precision`). Default: ``torch.float32``.
        **train_kwargs: more arguments for :func:`~bnlib.experiments.train`
            (``on_step``, ``train_accuracy``, ...).

    Example:
        >>> cnn_arm("batch").name, cnn_arm("none", name="plain").name
        ('batch', 'plain')
    """
    return Arm(name or norm,
               lambda: small_cnn(norm, channels=channels, init=init).to(dtype),
               train_kwargs={"momentum": momentum, "eval_every": eval_every, **train_kwargs})


def stack(histories: Sequence[History], metric: str = "val_accuracy"
          ) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation steps and one :class:`~bnlib.experiments.History` curve of every run,
    stacked for plotting mean and spread.

    Args:
        histories: runs of the same length (same ``steps`` and ``eval_every``).
        metric: ``"val_accuracy"``, ``"train_accuracy"`` or ``"train_loss"``.
            Default: ``"val_accuracy"``.

    Returns:
        ``steps`` of shape ``(E,)`` and values of shape ``(S, E)`` for ``S`` runs.
    """
    if metric not in ("val_accuracy", "train_accuracy", "train_loss"):
        raise ValueError(f"expected metric 'val_accuracy', 'train_accuracy' or 'train_loss' "
                         f"(got {metric!r})")
    steps = histories[0].steps
    if any(h.steps != steps for h in histories):
        raise ValueError("expected runs evaluated at the same steps (got different steps); "
                         "did some run diverge?")
    values = np.array([getattr(h, metric) for h in histories])  # (S, E)
    return np.array(steps), values
