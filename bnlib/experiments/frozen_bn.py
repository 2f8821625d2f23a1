"""A batch-norm wrapper that normalizes with fixed running statistics (FrozenBN).

Detection and segmentation models fine-tuned with tiny batches freeze their batch-norm
statistics this way; chapter 4's fine-tuning experiment (:mod:`bnlib.experiments.finetune`)
uses it.
"""
from __future__ import annotations

from torch import Tensor, nn

from bnlib.torch.precise import is_batch_norm

__all__ = ["FrozenStatsBatchNorm", "freeze_batch_norm_stats"]


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
        >>> import torch
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
    :class:`FrozenStatsBatchNorm` around it (idempotent); return ``model``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> net = freeze_batch_norm_stats(net)
        >>> type(net[1]).__name__
        'FrozenStatsBatchNorm'
    """
    for name, child in model.named_children():
        if isinstance(child, FrozenStatsBatchNorm):
            continue
        if is_batch_norm(child):
            setattr(model, name, FrozenStatsBatchNorm(child))
        else:
            freeze_batch_norm_stats(child)
    return model
