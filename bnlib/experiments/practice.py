"""Evidence behind the practical rules for batch norm (chapter 4).

Each function measures one rule on small float64 examples or short seeded runs on the digits:

* :func:`bias_before_bn`: a bias before batch norm is cancelled (identical outputs, zero
  gradient);
* :func:`companion_effect`: in training mode a sample's prediction depends on the other
  samples in its batch, in evaluation mode it does not;
* :func:`mlp_with_placement` and :func:`compare_placement`: batch norm before or after the
  activation;
* :func:`scale_invariance` and :func:`train_weight_decay`: batch norm makes the weights before
  it scale-invariant, so weight decay on them raises the effective learning rate
  (van Laarhoven 2017; Zhang et al. 2019);
* :class:`FrozenStatsBatchNorm` and :func:`finetune_small_batches`: fine-tuning with tiny
  batches, batch norm in training mode against frozen statistics.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlib.torch.precise import batch_norm_layers, is_batch_norm

from .data import Split
from .models import ACTIVATIONS, make_norm, mlp
from .train import History, train

__all__ = [
    "DECAY_TARGETS", "PLACEMENTS", "BiasCancellation", "CompanionEffect", "DecayRun", "FinetuneRun", "FrozenStatsBatchNorm",
    "ScaleRecord", "bias_before_bn", "companion_effect",
    "compare_placement", "finetune_small_batches", "freeze_batch_norm_stats",
    "mlp_with_placement", "running_stats_error", "scale_invariance", "train_weight_decay",
]




# --- 1. No bias before batch norm -------------------------------------------------------

@dataclass(frozen=True)
class BiasCancellation:
    """What :func:`bias_before_bn` measured.

    Attributes:
        output_difference: max ``|y_with_bias - y_without_bias|``.
        bias_grad_max: max ``|dL/db|`` of the bias before batch norm.
        weight_grad_max: max ``|dL/dW|`` of the weight beside it, for scale.
    """

    output_difference: float
    bias_grad_max: float
    weight_grad_max: float


def bias_before_bn(seed: int = 0, batch_size: int = 16, in_features: int = 8,
                   out_features: int = 4, bias_scale: float = 5.0,
                   norm_cls: type[nn.Module] = nn.BatchNorm1d) -> BiasCancellation:
    """Show that a bias before batch norm (training mode) changes nothing.

    Batch norm subtracts the batch mean, and a constant ``b`` shifts the mean by ``b``:

    .. math::

        \\mathrm{BN}(Wx + b) = \\gamma \\frac{Wx + b - (\\mu_{Wx} + b)}{\\sqrt{\\sigma^2_{Wx}
        + \\epsilon}} + \\beta = \\mathrm{BN}(Wx),

        \\frac{\\partial L}{\\partial b} = \\sum_i \\frac{\\partial L}{\\partial z_i} = 0 .

    Args:
        seed: seeds inputs, weights and the upstream gradient. Default: ``0``.
        batch_size, in_features, out_features: sizes. Defaults: ``16``, ``8``, ``4``.
        bias_scale: standard deviation of the random bias. Default: ``5.0``.
        norm_cls: the batch-norm class. Default: ``torch.nn.BatchNorm1d``.

    Example:
        >>> r = bias_before_bn()
        >>> r.output_difference < 1e-12 and r.bias_grad_max < 1e-12 < r.weight_grad_max
        True
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, in_features, generator=g, dtype=torch.float64)
    weight = torch.randn(out_features, in_features, generator=g, dtype=torch.float64)
    bias = bias_scale * torch.randn(out_features, generator=g, dtype=torch.float64)
    dy = torch.randn(batch_size, out_features, generator=g, dtype=torch.float64)
    outputs, grads = [], []
    for b in (bias, None):
        linear = nn.Linear(in_features, out_features, bias=b is not None).double()
        with torch.no_grad():
            linear.weight.copy_(weight)
            if b is not None:
                linear.bias.copy_(b)
        y = norm_cls(out_features).double()(linear(x))  # (N, out_features)
        (y * dy).sum().backward()
        outputs.append(y.detach())
        grads.append((linear.weight.grad, linear.bias.grad if b is not None else None))
    return BiasCancellation(float((outputs[0] - outputs[1]).abs().max()),
                            float(grads[0][1].abs().max()), float(grads[0][0].abs().max()))


# --- 2. model.eval() at inference -------------------------------------------------------

@dataclass(frozen=True)
class CompanionEffect:
    """One sample's class probabilities in ``num_batches`` batches of random companions.

    Attributes:
        train_probs: ``(num_batches, num_classes)`` in training mode (batch statistics).
        eval_probs: ``(num_batches, num_classes)`` in evaluation mode (running statistics).
    """

    train_probs: Tensor
    eval_probs: Tensor

    @property
    def train_predictions(self) -> Tensor:
        return self.train_probs.argmax(dim=1)

    @property
    def eval_predictions(self) -> Tensor:
        return self.eval_probs.argmax(dim=1)


@torch.no_grad()
def companion_effect(model: nn.Module, sample: Tensor, pool: Tensor, num_batches: int = 20,
                     batch_size: int = 8, seed: int = 0) -> CompanionEffect:
    """Classify ``sample`` inside ``num_batches`` batches whose other ``batch_size - 1``
    members are drawn at random from ``pool``, in training and in evaluation mode.

    The model is copied first, so its running statistics are not changed, and the
    evaluation-mode copy never sees a training-mode pass.

    Args:
        model: a classifier with batch norm.
        sample: ``(F,)`` one input.
        pool: ``(P, F)`` inputs to draw companions from.
        num_batches: number of different batches. Default: ``20``.
        batch_size: size of each batch, the sample included. Default: ``8``.
        seed: seed of the companion draws. Default: ``0``.
    """
    # Two copies: training-mode passes update the running statistics of theirs only.
    train_model, eval_model = copy.deepcopy(model).train(), copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(seed)
    train_probs, eval_probs = [], []
    for _ in range(num_batches):
        idx = torch.randperm(len(pool), generator=g)[:batch_size - 1]
        batch = torch.cat([sample.unsqueeze(0), pool[idx]])  # (batch_size, F)
        train_probs.append(F.softmax(train_model(batch)[0], dim=0))  # (num_classes,)
        eval_probs.append(F.softmax(eval_model(batch)[0], dim=0))
    return CompanionEffect(torch.stack(train_probs), torch.stack(eval_probs))


# --- 3. Placement: before or after the activation ---------------------------------------

PLACEMENTS = ("before", "after")


def mlp_with_placement(placement: str, in_features: int = 64, hidden: int = 100,
                       depth: int = 3, num_classes: int = 10, activation: str = "relu"
                       ) -> nn.Sequential:
    """An MLP with batch norm before or after each hidden activation.

    ``"before"``: ``Linear(bias=False) -> BN -> activation`` (Ioffe & Szegedy 2015, the same
    network as :func:`bnlib.experiments.mlp`); ``"after"``: ``Linear -> activation -> BN``.

    Example:
        >>> mlp_with_placement("after", depth=1)
        Sequential(
          (0): Linear(in_features=64, out_features=100, bias=True)
          (1): ReLU()
          (2): BatchNorm1d(100, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
          (3): Linear(in_features=100, out_features=10, bias=True)
        )
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"expected placement in {PLACEMENTS} (got {placement!r})")
    if placement == "before":
        return mlp(in_features, hidden, depth, num_classes, activation, norm="batch")
    if activation not in ACTIVATIONS:
        raise ValueError(f"expected activation in {sorted(ACTIVATIONS)} (got {activation!r})")
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[activation](), make_norm("batch", hidden)]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def compare_placement(split: Split, seeds: tuple[int, ...] = (0, 1, 2), steps: int = 300,
                      activation: str = "relu", lr: float = 0.1, eval_every: int = 50,
                      **train_kwargs) -> dict[str, list[History]]:
    """Train both placements with the same seeds; ``seed`` seeds initialization and batches.

    Returns:
        ``{"before": [History per seed], "after": [...]}``.
    """
    runs: dict[str, list[History]] = {}
    for placement in PLACEMENTS:
        runs[placement] = []
        for seed in seeds:
            torch.manual_seed(seed)
            model = mlp_with_placement(placement, split.num_features, activation=activation)
            runs[placement].append(train(model, split, steps, lr=lr, seed=seed,
                                         eval_every=eval_every, **train_kwargs))
    return runs


# --- 4. Scale invariance and weight decay -----------------------------------------------

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

    Example:
        >>> r = scale_invariance(scales=(2.0,), eps=1e-12)[0]
        >>> round(r.grad_norm_ratio, 9), r.max_cosine < 1e-12, r.output_difference < 1e-12
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


DECAY_TARGETS = ("none", "weights", "all")


def _pre_bn_weights(model: nn.Sequential) -> list[Tensor]:
    layers = list(model)
    return [a.weight for a, b in zip(layers, layers[1:]) if is_batch_norm(b)]


def train_weight_decay(split: Split, decay_on: str, weight_decay: float = 5e-3,
                       seed: int = 0, steps: int = 600, lr: float = 0.1,
                       record_every: int = 25, eval_every: int = 100) -> DecayRun:
    """Train ``mlp(norm="batch", activation="relu")`` with weight decay on chosen parameters.

    After each SGD step the chosen parameters are shrunk, :math:`p \\leftarrow (1 - \\text{lr}
    \\cdot \\lambda) p`; for plain SGD this equals L2 weight decay up to a term of order
    :math:`\\text{lr}^2 \\lambda`.

    Args:
        split: the data.
        decay_on: ``"none"``; ``"weights"``: every ``Linear`` weight, not batch norm's gamma
            and beta nor biases (the usual practice); ``"all"``: every parameter.
        weight_decay: :math:`\\lambda`. Default: ``5e-3``.
        seed: seeds initialization and batches. Default: ``0``.
        steps, lr: SGD steps and learning rate. Defaults: ``600``, ``0.1``.
        record_every: steps between norm records. Default: ``25``.
        eval_every: steps between accuracy evaluations. Default: ``100``.
    """
    if decay_on not in DECAY_TARGETS:
        raise ValueError(f"expected decay_on in {DECAY_TARGETS} (got {decay_on!r})")
    torch.manual_seed(seed)
    model = mlp(split.num_features, activation="relu", norm="batch")
    pre_bn = _pre_bn_weights(model)
    gammas = [m.weight for m in batch_norm_layers(model)]
    if decay_on == "none":
        decayed: list[Tensor] = []
    elif decay_on == "weights":
        decayed = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    else:
        decayed = list(model.parameters())
    run = DecayRun(History())

    @torch.no_grad()
    def record(step: int) -> None:
        sq = torch.cat([(w ** 2).sum(dim=1) for w in pre_bn])  # (hidden * depth,)
        run.steps.append(step)
        run.weight_norm.append(float(sq.sqrt().mean()))
        run.effective_lr.append(lr / float(sq.mean()))
        run.gamma_norm.append(float(torch.cat(gammas).abs().mean()))

    @torch.no_grad()
    def decay_and_record(step: int, _model: nn.Module) -> None:
        for p in decayed:
            p.mul_(1 - lr * weight_decay)
        if step % record_every == 0:
            record(step)

    record(0)
    run.history = train(model, split, steps, lr=lr, seed=seed, eval_every=eval_every,
                        on_step=decay_and_record)
    return run


# --- 5. Fine-tuning with small batches ----------------------------------------------------

class FrozenStatsBatchNorm(nn.Module):
    """Wrap a batch-norm layer so that it always normalizes with its running statistics and
    never updates them, whatever the mode of the surrounding model; ``weight`` and ``bias``
    stay trainable.

    .. math::

        y = \\gamma \\frac{x - \\hat\\mu}{\\sqrt{\\hat\\sigma^2 + \\epsilon}} + \\beta

    with the running :math:`\\hat\\mu, \\hat\\sigma^2` fixed.

    Args:
        bn: a ``BatchNorm1d/2d/3d`` from ``torch.nn`` or ``bnlib.torch``.

    Shape:
        as ``bn``.

    Example:
        >>> frozen = FrozenStatsBatchNorm(nn.BatchNorm1d(3)).train()
        >>> _ = frozen(torch.randn(2, 3))
        >>> int(frozen.bn.num_batches_tracked), frozen.bn.training
        (0, False)
    """

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.bn = bn.eval()

    def train(self, mode: bool = True) -> "FrozenStatsBatchNorm":
        """Set this wrapper's mode; the wrapped layer stays in evaluation mode."""
        super().train(mode)
        self.bn.eval()
        return self

    def forward(self, input: Tensor) -> Tensor:
        return self.bn(input)


def freeze_batch_norm_stats(model: nn.Module) -> nn.Module:
    """Replace, in place, every batch-norm child of ``model`` by a
    :class:`FrozenStatsBatchNorm` around it; return ``model``."""
    for name, child in model.named_children():
        if isinstance(child, FrozenStatsBatchNorm):
            continue
        if is_batch_norm(child):
            setattr(model, name, FrozenStatsBatchNorm(child))
        else:
            freeze_batch_norm_stats(child)
    return model


@torch.no_grad()
def running_stats_error(model: nn.Module, x: Tensor) -> float:
    """How far the running statistics are from the statistics they estimate.

    Feeds ``x`` (e.g. the whole training set) through ``model`` in evaluation mode, records
    each batch-norm layer's input, and returns the mean over layers and channels of
    ``|running_mean - mean| / std + |running_var / var - 1|``: 0 when the running
    statistics equal the population statistics of ``x``.
    """
    layers = batch_norm_layers(model)
    inputs: list[Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
             for m in layers]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    errors = []
    for m, z in zip(layers, inputs):
        mean, var = z.mean(dim=0), z.var(dim=0)  # (C,)
        errors.append((m.running_mean - mean).abs() / var.sqrt()
                      + (m.running_var / var - 1).abs())
    return float(torch.cat(errors).mean())


@dataclass(frozen=True)
class FinetuneRun:
    """One fine-tuning run of :func:`finetune_small_batches`.

    Attributes:
        frozen: batch-norm statistics frozen (``True``) or batch norm in training mode.
        history: the fine-tuning :class:`~bnlib.experiments.History` (step 0 = pretrained).
        stats_error_before: :func:`running_stats_error` on the training set before
            fine-tuning.
        stats_error_after: the same after fine-tuning.
    """

    frozen: bool
    history: History
    stats_error_before: float
    stats_error_after: float


def finetune_small_batches(split: Split, seed: int = 0, pretrain_steps: int = 300,
                           finetune_steps: int = 200, batch_size: int = 2,
                           lr: float = 0.005, eval_every: int = 25
                           ) -> tuple[FinetuneRun, FinetuneRun]:
    """Pretrain an MLP with batch norm (batch 60), then fine-tune two copies with tiny
    batches: one with batch norm in training mode, one with frozen statistics.

    Args:
        split: the data (pretraining and fine-tuning both use its training set).
        seed: seeds initialization and batch order. Default: ``0``.
        pretrain_steps: steps at batch size 60, learning rate 0.1. Default: ``300``.
        finetune_steps: steps of fine-tuning. Default: ``200``.
        batch_size: fine-tuning batch size. Default: ``2``.
        lr: fine-tuning learning rate. Default: ``0.005``.
        eval_every: steps between test-accuracy evaluations. Default: ``25``.

    Returns:
        ``(train_mode_run, frozen_run)``.
    """
    torch.manual_seed(seed)
    pretrained = mlp(split.num_features, activation="relu", norm="batch")
    train(pretrained, split, pretrain_steps, lr=0.1, seed=seed, eval_every=pretrain_steps)
    runs = []
    for frozen in (False, True):
        model = copy.deepcopy(pretrained)
        if frozen:
            freeze_batch_norm_stats(model)
        before = running_stats_error(model, split.x_train)
        history = train(model, split, finetune_steps, batch_size=batch_size, lr=lr,
                        seed=seed + 1000, eval_every=eval_every)
        runs.append(FinetuneRun(frozen, history, before,
                                running_stats_error(model, split.x_train)))
    return runs[0], runs[1]
