"""Training with Batch Renormalization (Ioffe 2017): swap BN layers and relax the clipping.

Ioffe (2017) trains "with batchnorm alone, without the correction" for a number of
iterations, then ramps up the correction by relaxing the bounds on ``r`` (from 1 to
``r_max``) and ``d`` (from 0 to ``d_max``). :class:`RenormSchedule` does that on the
:class:`bnlib.torch.BatchRenorm1d`/``2d`` layers of a model as an ``on_step`` callback of
:func:`bnlib.experiments.train`; :func:`with_batch_renorm` turns a BN model into a Batch
Renorm one with the same parameters.
"""
from __future__ import annotations

from torch import nn

import bnlib.torch as bt

__all__ = ["with_batch_renorm", "RenormSchedule"]

_RENORM = (bt.BatchRenorm1d, bt.BatchRenorm2d)


def with_batch_renorm(model: nn.Module, r_max: float = 1.0, d_max: float = 0.0) -> nn.Module:
    """Replace every :class:`bnlib.torch.BatchNorm1d`/``2d`` of ``model`` by a
    :class:`bnlib.torch.BatchRenorm1d`/``2d`` with the same parameters and buffers, in place.

    Args:
        model: the network.
        r_max, d_max: the initial clipping bounds. Default: ``1.0``, ``0.0`` (plain BN, the
            start of Ioffe's schedule).

    Returns:
        ``model``.

    Example:
        >>> net = with_batch_renorm(nn.Sequential(nn.Linear(3, 4), bt.BatchNorm1d(4)))
        >>> type(net[1]).__name__, net[1].r_max, net[1].d_max
        ('BatchRenorm1d', 1.0, 0.0)
    """
    pairs = {bt.BatchNorm1d: bt.BatchRenorm1d, bt.BatchNorm2d: bt.BatchRenorm2d}
    found = [(parent, name, child) for parent in model.modules()
             for name, child in parent.named_children() if type(child) in pairs]
    if not found:
        raise ValueError("expected a model with bnlib.torch.BatchNorm1d/2d layers (found none)")
    for parent, name, bn in found:
        factory = {"device": bn.running_mean.device, "dtype": bn.running_mean.dtype}
        renorm = pairs[type(bn)](bn.num_features, eps=bn.eps, momentum=bn.momentum,
                                 affine=bn.affine, r_max=r_max, d_max=d_max, **factory)
        renorm.load_state_dict(bn.state_dict())
        setattr(parent, name, renorm)
    return model


class RenormSchedule:
    r"""Relax Batch Renorm's bounds linearly over training, after a plain-BN warm-up.

    With :math:`t` the fraction of ``steps`` done, :math:`t_0` = ``warmup`` and
    :math:`t_1` = ``ramp_end``,

    .. math::
        \lambda(t) = \operatorname{clip}_{[0, 1]}\Big(\frac{t - t_0}{t_1 - t_0}\Big), \qquad
        r_{\max} = 1 + \lambda (r_{\max}^{\text{final}} - 1), \qquad
        d_{\max} = \lambda \, d_{\max}^{\text{final}} ,

    so the layers are plain BN for the first :math:`t_0` of training and reach the final
    bounds at :math:`t_1`. Called as ``schedule(step, model)`` after each update (the
    ``on_step`` of :func:`bnlib.experiments.train`), it sets the bounds for the next step.

    Args:
        steps: the length of the run.
        r_max, d_max: the final bounds. Default: ``3.0``, ``5.0`` (Ioffe's).
        warmup: :math:`t_0`. Default: ``0.1``.
        ramp_end: :math:`t_1`. Default: ``0.5``.

    Example:
        >>> net = with_batch_renorm(nn.Sequential(nn.Linear(3, 4), bt.BatchNorm1d(4)))
        >>> schedule = RenormSchedule(steps=100)
        >>> schedule(30, net)
        >>> round(net[1].r_max, 9), round(net[1].d_max, 9)
        (2.0, 2.5)
    """

    def __init__(self, steps: int, r_max: float = 3.0, d_max: float = 5.0,
                 warmup: float = 0.1, ramp_end: float = 0.5) -> None:
        if steps < 1 or r_max < 1 or d_max < 0 or not 0 <= warmup < ramp_end <= 1:
            raise ValueError(f"expected steps >= 1, r_max >= 1, d_max >= 0 and "
                             f"0 <= warmup < ramp_end <= 1 (got {steps}, {r_max}, {d_max}, "
                             f"{warmup}, {ramp_end})")
        self.steps, self.r_max, self.d_max = steps, r_max, d_max
        self.warmup, self.ramp_end = warmup, ramp_end

    def bounds(self, step: int) -> tuple[float, float]:
        """``(r_max, d_max)`` in force after ``step`` updates."""
        t = step / self.steps
        lam = min(1.0, max(0.0, (t - self.warmup) / (self.ramp_end - self.warmup)))
        return 1.0 + lam * (self.r_max - 1.0), lam * self.d_max

    def __call__(self, step: int, model: nn.Module) -> None:
        r_max, d_max = self.bounds(step)
        for module in model.modules():
            if isinstance(module, _RENORM):
                module.r_max, module.d_max = r_max, d_max
