"""The statistics core of every batch-style normalization in :mod:`bnlib.torch` (private).

One home for what batch norm, its functional form, Batch Renormalization, synchronized batch
norm, instance norm, the hand-written autograd Functions, PreciseBN and folding share:

* the axes and broadcast shape of per-channel statistics (:func:`reduce_dims`,
  :func:`channel_shape`) and the dtype they are accumulated in (:func:`opmath_dtype`:
  float32 for half and bfloat16 input, as torch's CPU kernels);
* the per-channel batch mean and biased variance, two-pass (:func:`batch_stats`), and the
  float64 count / mean / sum of squared deviations with Chan et al.'s merge
  (:func:`channel_moments`, :func:`merge_moments`);
* the running-average update with the unbiased ``m / (m - 1)`` correction
  (:func:`update_running_stats`) and the momentum factor, ``1/k`` for ``momentum=None``
  (:func:`momentum_factor`);
* the evaluation-mode per-channel affine map ``y = x * scale + shift`` (:func:`eval_scale`,
  :func:`eval_affine`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["batch_stats", "channel_moments", "channel_shape", "channel_sum", "empty_grad_input",
           "eval_affine", "eval_scale", "merge_moments", "momentum_factor", "opmath_dtype",
           "output_format", "reduce_dims", "update_running_stats", "values_per_channel"]


def reduce_dims(ndim: int) -> list[int]:
    """The dims a per-channel statistic reduces over: all but dim 1.

    Example:
        >>> reduce_dims(4)
        [0, 2, 3]
    """
    return [0] + list(range(2, ndim))


def channel_shape(ndim: int, num_channels: int) -> list[int]:
    """``[1, C, 1, ...]``: the shape that broadcasts a ``(C,)`` vector against the input.

    Example:
        >>> channel_shape(4, 3)
        [1, 3, 1, 1]
    """
    return [1, num_channels] + [1] * (ndim - 2)


def values_per_channel(size) -> int:
    """``m = N * prod(spatial)``: how many values each channel's statistics average over."""
    return size[0] * math.prod(size[2:])


def channel_sum(t: Tensor) -> Tensor:
    """Per-channel sum over all dims but 1, shape ``(C,)``. A contiguous ``(N, C, *spatial)``
    tensor is summed over its contiguous spatial run first, then over ``N``: the same
    pairwise sums, about twice as fast on a CPU as one reduction over dims ``(0, 2, ...)``.

    Example:
        >>> channel_sum(torch.ones(2, 3, 4))
        tensor([8., 8., 8.])
    """
    if t.dim() > 2 and t.is_contiguous():
        return t.view(t.shape[0], t.shape[1], math.prod(t.shape[2:])).sum(dim=-1).sum(dim=0)
    return t.sum(dim=reduce_dims(t.dim()))


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are accumulated in: float32 for float16/bfloat16 (as torch's CPU
    kernels), else ``dtype`` itself.

    Example:
        >>> opmath_dtype(torch.bfloat16)
        torch.float32
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _strides_like_channels_last(sizes, strides) -> bool:
    # c10's is_channels_last_strides_2d_s4 / _3d_s5: strides decrease in the order C, W,
    # (D,) H, N, with torch's tie-breaks for size-1 dims.
    order = (1, 3, 2, 0) if len(sizes) == 4 else (1, 4, 3, 2, 0)
    if strides[1] == 0:
        return False
    smallest = 0
    for d in order:
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:
            return False
        smallest = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


def output_format(input: Tensor) -> torch.memory_format:
    """The memory format torch's batch-norm kernels give their outputs and input gradients:
    contiguous for a contiguous input, else channels_last(_3d) when the input is
    channels_last-contiguous or c10's
    ``suggest_memory_format()`` says so (strides that look channels_last, with c10's rules
    for size-1 dims), else contiguous.

    Example:
        >>> output_format(torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last))
        torch.channels_last
    """
    if input.dim() not in (4, 5):
        return torch.contiguous_format
    last = torch.channels_last if input.dim() == 4 else torch.channels_last_3d
    if input.numel() == 0:  # every layout is "contiguous": compare with the canonical strides
        canonical = torch.empty(input.shape, device="meta").to(memory_format=last).stride()
        contiguous = torch.empty(input.shape, device="meta").stride()
        return last if input.stride() == canonical != contiguous else torch.contiguous_format
    if input.is_contiguous():
        return torch.contiguous_format
    if input.is_contiguous(memory_format=last) or \
            _strides_like_channels_last(input.shape, input.stride()):
        return last
    return torch.contiguous_format


def empty_grad_input(input: Tensor, dtype: torch.dtype) -> Tensor:
    """A tensor (to be overwritten) in the layout torch 2.13's CPU batch norm gives the input
    gradient: the output's memory format (:func:`output_format`), whatever ``dy``'s layout
    (measured on random layouts, here and by the differential fuzz)."""
    return torch.empty_like(input, dtype=dtype, memory_format=output_format(input))


def batch_stats(input: Tensor, dims: list[int] | None = None) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance, two-pass, in :func:`opmath_dtype`; differentiable.

    .. math::

        \\mu_c = \\frac{1}{m} \\sum_i x_{ic}, \\qquad
        \\sigma_c^2 = \\frac{1}{m} \\sum_i (x_{ic} - \\mu_c)^2

    Args:
        input: ``(N, C, *spatial)``.
        dims: the dims to reduce. Default: :func:`reduce_dims` (all but dim 1).

    Returns:
        ``(mean, var)``, each of shape ``(C,)`` (the kept dims when ``dims`` is given).

    Example:
        >>> batch_stats(torch.tensor([[1.0], [3.0]]))
        (tensor([2.]), tensor([1.]))
    """
    dims = reduce_dims(input.dim()) if dims is None else dims
    x = input.to(opmath_dtype(input.dtype))
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).square().mean(dim=dims, keepdim=True)
    keep = [d for d in range(input.dim()) if d not in [d % input.dim() for d in dims]]
    out_shape = [input.shape[d] for d in keep]
    return mean.reshape(out_shape), var.reshape(out_shape)


def channel_moments(input: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel count, mean and sum of squared deviations ``M_2`` of ``input`` (detached),
    in float64: the summary that :func:`merge_moments` combines across batches or processes.

    Example:
        >>> count, mean, m2 = channel_moments(torch.tensor([[1.0], [3.0]]))
        >>> count.tolist(), mean.tolist(), m2.tolist()
        ([2.0], [2.0], [2.0])
    """
    x = input.detach().to(torch.float64)
    dims = reduce_dims(x.dim())
    mean = x.mean(dim=dims)  # (C,)
    m2 = (x - mean.view(channel_shape(x.dim(), -1))).square().sum(dim=dims)  # (C,)
    count = torch.full_like(mean, float(values_per_channel(x.shape)))  # (C,)
    return count, mean, m2


def merge_moments(count_a: Tensor, mean_a: Tensor, m2_a: Tensor, count_b: Tensor,
                  mean_b: Tensor, m2_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Count, mean and sum of squared deviations of the union of two sets of values, from
    those of each set (Chan, Golub & LeVeque, 1982):

    .. math::

        n = n_a + n_b, \\quad \\delta = \\bar{x}_b - \\bar{x}_a,

        \\bar{x} = \\bar{x}_a + \\delta \\frac{n_b}{n}, \\quad
        M_2 = M_{2,a} + M_{2,b} + \\delta^2 \\frac{n_a n_b}{n}

    Unlike summing ``x`` and ``x**2``, it never subtracts two large nearly equal numbers.

    Args:
        count_a, mean_a, m2_a: per-channel ``(C,)`` statistics of the first set.
        count_b, mean_b, m2_b: the same for the second set.

    Example:
        >>> one, two = torch.tensor([1.0]), torch.tensor([2.0])
        >>> merge_moments(one, torch.tensor([0.0]), torch.tensor([0.0]),
        ...               two, torch.tensor([3.0]), torch.tensor([2.0]))
        (tensor([3.]), tensor([2.]), tensor([8.]))
    """
    count = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / count)
    m2 = m2_a + m2_b + delta.square() * (count_a * count_b / count)
    return count, mean, m2


@torch.no_grad()
def update_running_stats(running_mean: Tensor | None, running_var: Tensor | None,
                         mean: Tensor, var: Tensor, count: int, momentum: float) -> None:
    """Move the running statistics towards this batch's, in place and without autograd:

    .. math::

        \\hat\\mu \\leftarrow (1 - \\alpha)\\hat\\mu + \\alpha \\mu_B, \\qquad
        \\hat\\sigma^2 \\leftarrow (1 - \\alpha)\\hat\\sigma^2
            + \\alpha \\frac{m}{m - 1} \\sigma^2_B

    with ``alpha = momentum`` and the biased batch variance ``var`` made unbiased (``m =
    count``; torch's CPU kernel uses the same factor, ``inf`` for ``m = 1``). The update is
    done in the buffers' dtype from statistics in ``mean``'s dtype (float32 for half input).

    Args:
        running_mean, running_var: ``(C,)`` buffers, or ``None`` to skip one.
        mean, var: ``(C,)`` batch mean and biased variance.
        count: ``m``, values per channel.
        momentum: ``alpha``.

    Example:
        >>> rm, rv = torch.zeros(1), torch.ones(1)
        >>> update_running_stats(rm, rv, torch.tensor([2.0]), torch.tensor([1.0]), 2, 0.5)
        >>> rm, rv
        (tensor([1.]), tensor([1.5000]))
    """
    if running_mean is not None:
        running_mean.mul_(1 - momentum).add_(mean.detach().to(running_mean.dtype),
                                             alpha=momentum)
    if running_var is not None:
        unbiased = var.detach() * (count / (count - 1) if count > 1 else math.inf)
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def momentum_factor(module: nn.Module) -> float:
    """The weight of this batch in ``module``'s running averages, counting the batch:
    in training with running statistics ``num_batches_tracked`` grows by one, and
    ``momentum=None`` gives the cumulative average's ``1 / num_batches_tracked``; otherwise
    ``momentum`` (``0.0`` for ``None``), exactly as ``torch.nn``'s ``_BatchNorm.forward``.

    Example:
        >>> bn = torch.nn.BatchNorm1d(2, momentum=None)
        >>> momentum_factor(bn), momentum_factor(bn), int(bn.num_batches_tracked)
        (1.0, 0.5, 2)
    """
    factor = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats and \
            module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
        if module.momentum is None:
            factor = 1.0 / float(module.num_batches_tracked)
    return factor


def eval_scale(running_var: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """``scale = weight / sqrt(running_var + eps)`` (``weight = 1`` when ``None``): the
    per-channel slope of batch norm in evaluation mode, shape ``(C,)``.

    Example:
        >>> eval_scale(torch.tensor([3.0]), torch.tensor([2.0]), 1.0)
        tensor([1.])
    """
    scale = torch.rsqrt(running_var + eps)
    return scale if weight is None else scale * weight


def eval_affine(running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    """Evaluation-mode batch norm as one per-channel affine map ``y = x * scale + shift``:

    .. math::

        s = \\frac{\\gamma}{\\sqrt{\\hat\\sigma^2 + \\epsilon}}, \\qquad
        t = \\beta - \\hat\\mu\\, s

    (``gamma = 1``, ``beta = 0`` when ``None``). The map is right for the output; gradients
    of ``gamma`` must not be taken through ``t`` (they would lose precision in proportion to
    ``|mu| / sigma``), see :class:`bnlib.torch.autograd.BatchNormEvalFunction`.

    Example:
        >>> eval_affine(torch.tensor([1.0]), torch.tensor([3.0]), None, None, 1.0)
        (tensor([0.5000]), tensor([-0.5000]))
    """
    scale = eval_scale(running_var, weight, eps)
    shift = -running_mean * scale if bias is None else bias - running_mean * scale
    return scale, shift
