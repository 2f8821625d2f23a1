"""Which variance batch norm divides by in training: a design choice and its trade-off.

In training, ``torch.nn`` (and :mod:`bnlib.torch`, to be a drop-in) normalizes with the
biased batch variance :math:`\\sigma_B^2 = \\frac{1}{m}\\sum_i (x_i - \\mu_B)^2` and stores
the unbiased :math:`s_B^2 = \\frac{m}{m-1}\\sigma_B^2` in ``running_var``, as Ioffe & Szegedy
(2015, Algorithm 2) do. Karpathy's makemore (and the source article's code) normalizes with
:math:`s_B^2` too, so that training and evaluation divide by the same estimator. Each choice
keeps one thing equal between the modes and not the other:

- the denominators: :math:`\\mathbb{E}[s_B^2] = \\sigma^2`, what the running variance
  estimates, while :math:`\\mathbb{E}[\\sigma_B^2] = \\frac{m-1}{m}\\sigma^2`;
- the outputs: the deviations :math:`x_i - \\mu_B` from the batch's own mean are smaller
  than deviations from the population mean by the same factor,
  :math:`\\mathbb{E}[\\frac{1}{m}\\sum_i (x_i - \\mu_B)^2] = \\frac{m-1}{m}\\sigma^2`, so
  dividing by :math:`\\sigma_B^2` gives training outputs of mean square 1 per batch (for
  :math:`\\epsilon \\to 0`), as evaluation does, and dividing by :math:`s_B^2` gives
  :math:`\\frac{m-1}{m}`.

:class:`UnbiasedBatchNorm1d` is the second convention; :func:`normalized_scale` measures
both quantities in a network, in each mode.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bnlib.torch.precise import batch_norm_layers

__all__ = ["CONVENTIONS", "ModeScale", "UnbiasedBatchNorm1d", "convention_mlp",
           "normalized_scale"]


class UnbiasedBatchNorm1d(nn.BatchNorm1d):
    """Batch norm that normalizes with the *unbiased* batch variance in training
    (Karpathy's makemore convention; also the source article's), for ``(N, C)`` input.

    .. math::

        \\hat{x}_i = \\frac{x_i - \\mu_B}{\\sqrt{s_B^2 + \\epsilon}}, \\qquad
        s_B^2 = \\frac{1}{m-1}\\sum_{i=1}^{m} (x_i - \\mu_B)^2 .

    Everything else is ``torch.nn.BatchNorm1d``: the running statistics (``running_var``
    gets :math:`s_B^2`, as in torch), evaluation mode, the arguments.

    Args:
        num_features: channels ``C``.
        **kwargs: as for :class:`torch.nn.BatchNorm1d` (``eps=1e-5``, ``momentum=0.1``,
            ``affine=True``, ...).

    Shape:
        ``(N, C) -> (N, C)``.

    Example:
        >>> layer = UnbiasedBatchNorm1d(1, eps=0.0)
        >>> layer(torch.tensor([[1.0], [3.0]])).flatten().tolist()  # s = sqrt(2)
        [-0.7071067690849304, 0.7071067690849304]
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        if x.ndim != 2:
            raise ValueError(f"expected 2D input (got {x.ndim}D input)")
        if x.shape[0] < 2:
            raise ValueError("Expected more than 1 value per channel when training, "
                             f"got input size {tuple(x.shape)}")
        mean, var = x.mean(dim=0), x.var(dim=0, unbiased=True)  # (C,), (C,)
        if self.track_running_stats:
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else (
                1.0 / float(self.num_batches_tracked))
            with torch.no_grad():
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach())
        x_hat = (x - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            x_hat = x_hat * self.weight + self.bias
        return x_hat


#: The two conventions, each name mapped to the layer class that follows it.
CONVENTIONS: dict[str, type[nn.Module]] = {"biased (torch.nn)": nn.BatchNorm1d,
                                          "unbiased (makemore)": UnbiasedBatchNorm1d}


def convention_mlp(convention: str, **mlp_kwargs) -> nn.Sequential:
    """:func:`bnlib.experiments.mlp` with ``norm="batch"`` whose batch-norm layers follow
    ``convention`` (a key of :data:`CONVENTIONS`); everything else, the initialization
    included, is the builder's.

    Example:
        >>> net = convention_mlp("unbiased (makemore)", depth=1)
        >>> type(net[1]).__name__
        'UnbiasedBatchNorm1d'
    """
    from .models import mlp

    if convention not in CONVENTIONS:
        raise ValueError(f"expected convention in {sorted(CONVENTIONS)} (got {convention!r})")
    net = mlp(norm="batch", **mlp_kwargs)
    cls = CONVENTIONS[convention]
    for i, layer in enumerate(net):
        if layer in batch_norm_layers(net):
            net[i] = cls(layer.num_features)
    return net


@dataclass
class ModeScale:
    """Mean square of the normalized values :math:`\\hat{x}` per batch-norm layer.

    Attributes:
        train: in training mode, over batches of the training size (layers in order).
        eval: in evaluation mode, with the running statistics, over the same data.
    """

    train: list[float]
    eval: list[float]

    @property
    def ratio(self) -> list[float]:
        """``sqrt(eval / train)`` per layer: how much larger a normalized value's typical
        size is at evaluation than in training (1 = the modes agree)."""
        return [(e / t) ** 0.5 for e, t in zip(self.eval, self.train)]


@torch.no_grad()
def normalized_scale(model: nn.Module, x: Tensor, batch_size: int) -> ModeScale:
    """Measure :math:`\\mathbb{E}[\\hat{x}^2]` at every batch-norm layer of ``model`` in
    both modes: in training mode over ``x`` cut into batches of ``batch_size`` (a trailing
    remainder is dropped) and in evaluation mode over all of ``x``.

    The model is deep-copied (training-mode passes would update its running statistics)
    and evaluated first, with the statistics it was trained with.
    :math:`\\hat{x}` is recovered from each layer's output as :math:`(y - \\beta)/\\gamma`.

    Args:
        model: a network with affine batch-norm layers whose weights are nonzero.
        x: inputs, ``(N, ...)``.
        batch_size: the training batch size (``>= 2``).

    Returns:
        A :class:`ModeScale`.
    """
    if batch_size < 2:
        raise ValueError(f"expected batch_size >= 2 (got {batch_size})")
    probe = copy.deepcopy(model)
    layers = batch_norm_layers(probe)
    sums = [0.0] * len(layers)
    counts = [0] * len(layers)

    def hook(index: int):
        def record(module: nn.Module, args, out: Tensor) -> None:
            x_hat = (out - module.bias) / module.weight
            sums[index] += float((x_hat.double() ** 2).sum())
            counts[index] += x_hat.numel()
        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        probe.eval()  # first: the training-mode passes below update the statistics
        probe(x)
        evaluation = [s / c for s, c in zip(sums, counts)]
        sums[:], counts[:] = [0.0] * len(layers), [0] * len(layers)
        probe.train()
        for start in range(0, len(x) - batch_size + 1, batch_size):
            probe(x[start:start + batch_size])
        train = [s / c for s, c in zip(sums, counts)]
    finally:
        for handle in handles:
            handle.remove()
    return ModeScale(train, evaluation)
