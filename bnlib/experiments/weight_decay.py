"""Rule 4 of chapter 4: batch norm's scale invariance, weight decay and the effective
learning rate (van Laarhoven 2017; Zhang et al. 2019).

Batch norm makes the weights before it scale-invariant (:func:`scale_invariance`), so
weight decay on them cannot change the function; it shrinks their norm and so raises the
effective learning rate :math:`\\eta / \\lVert w \\rVert^2` (:func:`train_weight_decay`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlib.torch.precise import batch_norm_layers, is_batch_norm

from .data import Split
from .models import mlp
from .precision import cast_like
from .protocol import Arm
from .train import History, train

__all__ = ["DECAY_TARGETS", "DecayRun", "ScaleRecord", "add_weight_decay",
           "decay_arms", "decayed_parameters", "scale_invariance", "train_weight_decay"]

#: Which parameters weight decay acts on, in order none; every ``Linear``/``Conv`` weight but not
#: batch norm's :math:`\gamma, \beta` nor biases (the usual practice); every parameter.
DECAY_TARGETS = ("none", "weights", "all")


@dataclass(frozen=True)
class ScaleRecord:
    """Batch norm after ``Linear`` with its weight multiplied by ``scale``.

    Attributes:
        scale: the factor ``c``.
        output_difference: max ``|BN(cWx) - BN(Wx)|``.
        grad_norm_ratio: ``||dL/d(cW)|| / ||dL/dW||`` (theory: ``1/c``).
        max_cosine: max over output units of ``|cos(w_j, dL/dw_j)|`` (theory: 0).
    """

    scale: float
    output_difference: float
    grad_norm_ratio: float
    max_cosine: float


def scale_invariance(scales: tuple[float, ...] = (0.5, 2.0, 10.0), seed: int = 0,
                     batch_size: int = 32, in_features: int = 16, out_features: int = 8,
                     eps: float = 1e-5) -> list[ScaleRecord]:
    """Measure the scale invariance of ``BN(Wx)`` in ``W`` and its consequence for gradients.

    For every row :math:`w_j` and :math:`c > 0`, :math:`\\mathrm{BN}(c W x) = \\mathrm{BN}(W x)`
    (up to ``eps``), hence

    .. math::

        \\nabla_{cW} L = \\tfrac{1}{c} \\nabla_W L, \\qquad w_j^\\top \\nabla_{w_j} L = 0 .

    A gradient step of size ``lr`` on ``W`` therefore turns the direction of :math:`w_j` as
    much as a step of ``lr / ||w_j||^2`` on a unit-norm weight: the *effective learning rate*.

    Args:
        scales: the factors ``c``. Default: ``(0.5, 2.0, 10.0)``.
        seed: seeds inputs, weights and upstream gradient. Default: ``0``.
        batch_size, in_features, out_features: sizes. Defaults: ``32``, ``16``, ``8``.
        eps: batch norm's epsilon. Default: ``1e-5``.

    Example:
        >>> r = scale_invariance(scales=(2.0,), eps=1e-12)[0]
        >>> (round(r.grad_norm_ratio, 9), r.max_cosine < 1e-12,
        ...  r.output_difference < 1e-12)
        (0.5, True, True)
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, in_features, generator=g, dtype=torch.float64)
    weight = torch.randn(out_features, in_features, generator=g, dtype=torch.float64)
    dy = torch.randn(batch_size, out_features, generator=g, dtype=torch.float64)

    def forward(w: Tensor) -> tuple[Tensor, Tensor]:
        w = w.clone().requires_grad_()
        y = F.batch_norm(x @ w.T, None, None, training=True, eps=eps)  # (N, out_features)
        (y * dy).sum().backward()
        return y.detach(), w.grad

    y1, g1 = forward(weight)
    records = []
    for c in scales:
        yc, gc = forward(c * weight)
        cosine = (F.cosine_similarity(weight, gc, dim=1)).abs().max()
        records.append(ScaleRecord(c, float((yc - y1).abs().max()),
                                   float(gc.norm() / g1.norm()), float(cosine)))
    return records


def decayed_parameters(model: nn.Module, decay_on: str) -> list[Tensor]:
    """The parameters weight decay acts on, for a target of :data:`DECAY_TARGETS`.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.BatchNorm1d(3))
        >>> [len(decayed_parameters(net, d)) for d in DECAY_TARGETS]
        [0, 1, 3]
    """
    if decay_on not in DECAY_TARGETS:
        raise ValueError(f"expected decay_on in {DECAY_TARGETS} (got {decay_on!r})")
    if decay_on == "none":
        return []
    if decay_on == "weights":
        return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return list(model.parameters())


def add_weight_decay(model: nn.Module, decay_on: str, weight_decay: float) -> nn.Module:
    """Add L2 weight decay :math:`\\lambda p` to the gradient of the chosen parameters, with
    a gradient hook, so any optimizer at any learning rate applies it; return ``model``.

    With SGD this is ``torch.optim.SGD(weight_decay=λ)`` on those parameters only:
    :math:`p \\leftarrow p - \\eta (\\nabla_p L + \\lambda p)`.

    Example:
        >>> lin = add_weight_decay(nn.Linear(2, 1, bias=False), "weights", 0.5)
        >>> lin(torch.zeros(1, 2)).sum().backward()  # zero loss gradient
        >>> torch.equal(lin.weight.grad, 0.5 * lin.weight.detach())
        True
    """
    for p in decayed_parameters(model, decay_on):
        p.register_hook(lambda grad, p=p: grad + weight_decay * p.detach())
    return model


@dataclass
class DecayRun:
    """One training run of :func:`train_weight_decay`.

    Attributes:
        history: the :class:`~bnlib.experiments.History` of the run.
        steps: steps at which norms were recorded (every ``record_every`` steps, 0 first).
        weight_norm: mean row norm :math:`\\overline{\\lVert w_j \\rVert}` of the ``Linear``
            weights feeding batch norm, per recorded step.
        effective_lr: ``lr / mean_j ||w_j||^2`` for those weights, per recorded step.
        gamma_norm: mean ``|gamma|`` of the batch-norm layers, per recorded step.
    """

    history: History
    steps: list[int] = field(default_factory=list)
    weight_norm: list[float] = field(default_factory=list)
    effective_lr: list[float] = field(default_factory=list)
    gamma_norm: list[float] = field(default_factory=list)


def _pre_bn_weights(model: nn.Sequential) -> list[Tensor]:
    layers = list(model)
    return [a.weight for a, b in zip(layers, layers[1:]) if is_batch_norm(b)]


def train_weight_decay(model: nn.Sequential, split: Split, decay_on: str,
                       weight_decay: float = 5e-3, seed: int = 0, steps: int = 600,
                       lr: float = 0.1, record_every: int = 25,
                       eval_every: int = 100) -> DecayRun:
    """Train ``model`` (a ``Linear -> BN -> activation`` MLP) with weight decay on the chosen
    parameters and record the norms that explain its effect.

    Args:
        model: the network, e.g. ``mlp(norm="batch", activation="relu")``, initialized.
        split: the data.
        decay_on: a target of :data:`DECAY_TARGETS`.
        weight_decay: :math:`\\lambda`. Default: ``5e-3``.
        seed: seeds the batches. Default: ``0``.
        steps, lr: SGD steps and learning rate. Defaults: ``600``, ``0.1``.
        record_every: steps between norm records. Default: ``25``.
        eval_every: steps between accuracy evaluations. Default: ``100``.
    """
    add_weight_decay(model, decay_on, weight_decay)
    pre_bn = _pre_bn_weights(model)
    gammas = [m.weight for m in batch_norm_layers(model)]
    run = DecayRun(History())

    @torch.no_grad()
    def record(step: int, _model: nn.Module | None = None) -> None:
        if step % record_every:
            return
        sq = torch.cat([(w ** 2).sum(dim=1) for w in pre_bn])  # (hidden * depth,)
        run.steps.append(step)
        run.weight_norm.append(float(sq.sqrt().mean()))
        run.effective_lr.append(lr / float(sq.mean()))
        run.gamma_norm.append(float(torch.cat(gammas).abs().mean()))

    record(0)
    run.history = train(model, split, steps, lr=lr, seed=seed, eval_every=eval_every,
                        on_step=record)
    return run


def decay_arms(weight_decay: float = 5e-3, eval_every: int = 50, split: Split | None = None,
               **mlp_kwargs) -> list[Arm]:
    """One arm of :func:`bnlib.experiments.protocol.run` per target of
    :data:`DECAY_TARGETS`: ``mlp(norm="batch", activation="relu")`` initialized for ReLU,
    with L2 weight decay on those parameters (:func:`add_weight_decay`).

    Args:
        weight_decay: :math:`\\lambda`. Default: ``5e-3``.
        eval_every: steps between evaluations. Default: ``50``.
        split: when given, models are built in the dtype of its inputs
            (:func:`~bnlib.experiments.precision.cast_like`; float64 with
            :func:`~bnlib.experiments.precision.double_split`). Default: ``None``
            (PyTorch's default dtype).
        **mlp_kwargs: sizes for :func:`~bnlib.experiments.mlp`.

    Example:
        >>> [arm.name for arm in decay_arms()]
        ['none', 'weights', 'all']
    """
    def net() -> nn.Module:
        return mlp(norm="batch", activation="relu", **mlp_kwargs)

    make = net if split is None else cast_like(net, split)

    def build(decay_on: str) -> nn.Module:
        return add_weight_decay(make(), decay_on, weight_decay)

    return [Arm(d, lambda d=d: build(d), train_kwargs={"eval_every": eval_every})
            for d in DECAY_TARGETS]
