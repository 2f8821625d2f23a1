"""Batch normalization as ``torch.autograd.Function``\\ s with the hand-derived backward pass
(the compact form of :func:`bnlib.numpy.batch_norm_backward`): what
:func:`bnlib.torch.batch_norm` and the batch-norm modules run.

Autograd records one node per call instead of the ten of the elementwise graph, and the
passes over memory reuse the output buffer instead of allocating a temporary per line of
the math (on a CPU a fresh large tensor costs a page fault per 4 KiB on first touch).
Both backward passes are written in differentiable tensor operations of the saved input,
so double backward (``create_graph=True``, ``gradgradcheck``) works.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._stats import (batch_stats, channel_shape, channel_sum, empty_grad_input, eval_affine,
                     opmath_dtype, output_format, reduce_dims, update_running_stats,
                     values_per_channel)

__all__ = ["BatchNormEvalFunction", "BatchNormFunction", "batch_norm_backward",
           "batch_norm_graph"]


def batch_norm_graph(input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                     running_mean: Tensor | None, running_var: Tensor | None,
                     momentum: float, training: bool) -> Tensor:
    """Batch norm as plain differentiable tensor operations, for ``torch.compile``: the
    compiler fuses them into one kernel and derives the backward itself, which beats
    tracing the in-place passes of :class:`BatchNormFunction` (see ``benchmarks/``).

    .. math::

        y = \\gamma \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} + \\beta

    with batch statistics (updating the running ones) in training, running ones otherwise.
    """
    shape = channel_shape(input.dim(), input.shape[1])
    acc = opmath_dtype(input.dtype)
    x = input.to(acc)
    if training:
        mean, var = batch_stats(x)  # (C,) each
        m = values_per_channel(input.shape)
        if m > 0:
            update_running_stats(running_mean, running_var, mean, var, m, momentum)
    else:
        mean, var = running_mean.to(acc), running_var.to(acc)
    out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        out = out * weight.to(acc).view(shape)
    if bias is not None:
        out = out + bias.to(acc).view(shape)
    return out.to(input.dtype)


def _differentiable(grad_out: Tensor) -> bool:
    """Whether backward must use out-of-place differentiable ops: under ``create_graph=True``
    (double backward) or when ``grad_out`` is a functorch tensor (``vmap`` over backward, as
    ``gradcheck(check_batched_grad=True)`` does), which in-place and ``out=`` ops break."""
    functorch = torch._C._functorch
    return (torch.is_grad_enabled() or functorch.is_functorch_wrapped_tensor(grad_out)
            or functorch.is_legacy_batchedtensor(grad_out))


def _dense(x: Tensor) -> bool:
    """Whether torch's CPU kernels take their fused ``x * scale + shift`` path for ``x``
    (contiguous or channels_last-contiguous); on other layouts they compute
    ``(x - mean) * scale + bias``, which does not round ``mean * scale``."""
    return x.is_contiguous() or output_format(x) != torch.contiguous_format and \
        x.is_contiguous(memory_format=output_format(x))


def batch_norm_backward(grad_out: Tensor, input: Tensor, weight: Tensor | None, eps: float,
                        needs: tuple[bool, bool, bool] = (True, True, True)):
    """The book's compact backward pass, in differentiable tensor operations:

    .. math::

        \\frac{\\partial L}{\\partial x} = \\frac{\\gamma}{m \\sqrt{\\sigma^2 + \\epsilon}}
        \\Big( m\\, g - \\textstyle\\sum g - \\hat{x} \\sum g \\hat{x} \\Big), \\quad
        \\frac{\\partial L}{\\partial \\gamma} = \\textstyle\\sum g \\hat{x}, \\quad
        \\frac{\\partial L}{\\partial \\beta} = \\textstyle\\sum g

    (sums per channel over its ``m`` values, ``g = dL/dy``). The statistics are recomputed
    from ``input``, so the result is differentiable in ``input``, ``weight`` and ``grad_out``.

    Returns:
        ``(grad_input, grad_weight, grad_bias)``, ``None`` where ``needs`` is ``False``.
    """
    dims, shape = reduce_dims(input.dim()), channel_shape(input.dim(), input.shape[1])
    acc = opmath_dtype(input.dtype)
    x, g = input.to(acc), grad_out.to(acc)
    m = values_per_channel(input.shape)
    mean, var = batch_stats(x)
    inv_std = torch.rsqrt(var + eps)  # (C,)
    x_hat = (x - mean.view(shape)) * inv_std.view(shape)
    grad_bias = g.sum(dim=dims)  # (C,)
    grad_weight = (g * x_hat).sum(dim=dims)  # (C,)
    grad_input = None
    if needs[0]:
        scale = inv_std / m if weight is None else weight.to(acc) * inv_std / m  # (C,)
        grad_input = scale.view(shape) * (m * g - grad_bias.view(shape)
                                          - x_hat * grad_weight.view(shape))
        # torch's layout (a differentiable copy where it differs)
        grad_input = grad_input.to(input.dtype).contiguous(memory_format=output_format(input))
    return (grad_input, grad_weight.to(weight.dtype) if needs[1] else None,
            grad_bias if needs[2] else None)


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm ``y = weight * (x - mean) / sqrt(var + eps) + bias`` with
    batch statistics, updating the running statistics when given, and

    .. math::

        \\frac{\\partial L}{\\partial x} = \\frac{\\gamma}{m \\sqrt{\\sigma^2 + \\epsilon}}
        \\Big( m\\, g - \\textstyle\\sum g - \\hat{x} \\sum g \\hat{x} \\Big)

    in ``backward`` (sums per channel over the ``m`` values of that channel). It saves the
    input and the per-channel mean and ``1/std``, not ``x_hat``.

    Forward makes one new tensor (the output) and four passes over memory: the mean; ``x -
    mean`` into the output buffer; its square, in place, summed for the variance; and the
    output as one fused affine map of ``x``. The fast backward makes one new tensor (the
    input gradient): ``(x - mean) * g`` in place, summed, then
    ``dx = g a + x b + c`` per channel. Statistics are accumulated in float32 for half and
    bfloat16 input; the output and input gradient have the input's dtype and torch's memory
    format. Under ``create_graph=True`` the backward is
    :func:`~bnlib.torch.autograd.batch_norm_backward`, which autograd differentiates again.

    Args (of ``apply``):
        input: ``(N, C, *spatial)``; weight, bias: ``(C,)`` or ``None``; eps: float;
        running_mean, running_var: ``(C,)`` buffers or ``None`` (updated in place);
        momentum: weight of this batch in the running averages. Default: ``0.1``.

    Example:
        >>> x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        >>> w = torch.ones(3, dtype=torch.float64, requires_grad=True)
        >>> b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        >>> torch.autograd.gradcheck(BatchNormFunction.apply, (x, w, b, 1e-5))
        True
        >>> torch.autograd.gradgradcheck(BatchNormFunction.apply, (x, w, b, 1e-5))
        True
    """

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor | None, bias: Tensor | None,
                eps: float = 1e-5, running_mean: Tensor | None = None,
                running_var: Tensor | None = None, momentum: float = 0.1) -> Tensor:
        shape = channel_shape(input.dim(), input.shape[1])
        acc = opmath_dtype(input.dtype)
        x = input.to(acc)
        m = values_per_channel(input.shape)
        mean = channel_sum(x) / m  # (C,)
        out = torch.empty_like(x, memory_format=output_format(input))
        torch.sub(x, mean.view(shape), out=out)  # x - mean, in the output's buffer
        # The float32 mean is off by up to a few ulps of itself, i.e. |mean|/std times the
        # spread's rounding; the mean of the residuals corrects it (torch sums in float64).
        delta = channel_sum(out) / m  # (C,)
        # biased, two-pass: E[(x - mean)^2] - delta^2
        var = (channel_sum(out.square_()) / m - delta.square()).clamp_(min=0)
        mean = mean + delta
        if m > 0:
            update_running_stats(running_mean, running_var, mean, var, m, momentum)
        else:  # an empty batch (as torch): buffers untouched, zero weight and bias gradients
            mean, var = mean.nan_to_num(0.0), var.nan_to_num(0.0)
        inv_std = torch.rsqrt(var + eps)  # (C,)
        scale = inv_std if weight is None else inv_std * weight.to(acc)  # (C,)
        shift = -mean * scale if bias is None else bias.to(acc) - mean * scale  # (C,)
        if _dense(x):  # one fused pass, as torch's contiguous kernels
            torch.addcmul(shift.view(shape), x, scale.view(shape), out=out)
        else:  # (x - mean) * scale + bias, as torch's generic kernel: exact centring
            torch.sub(x, mean.view(shape), out=out).mul_(scale.view(shape))
            if bias is not None:
                out.add_(bias.to(acc).view(shape))
        ctx.save_for_backward(input, weight, mean, inv_std)
        ctx.eps, ctx.bias_dtype = eps, None if bias is None else bias.dtype
        return out if out.dtype == input.dtype else out.to(input.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        input, weight, mean, inv_std = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                 ctx.needs_input_grad[2])
        if _differentiable(grad_out):  # create_graph=True or vmap: out-of-place ops
            grads = batch_norm_backward(grad_out, input, weight, ctx.eps, needs)
            grad_bias = None if grads[2] is None else grads[2].to(ctx.bias_dtype)
            return grads[0], grads[1], grad_bias, None, None, None, None
        shape = channel_shape(input.dim(), input.shape[1])
        acc = opmath_dtype(input.dtype)
        x, g = input.to(acc), grad_out.to(acc)
        m = values_per_channel(input.shape)
        # The buffer becomes grad_input, in torch's layout.
        buf = empty_grad_input(input, acc)
        torch.sub(x, mean.view(shape), out=buf)
        sum_g = channel_sum(g)  # (C,)
        sum_g_xc = channel_sum(buf.mul_(g))  # (C,) sum g (x - mean)
        grad_input = grad_weight = None
        if needs[1]:
            grad_weight = (sum_g_xc * inv_std).to(weight.dtype)
        if needs[0]:
            # dx = a (g - sum_g / m - (x - mean) k), with a = gamma / std, k = sum_g_xc / (m var)
            a = inv_std if weight is None else inv_std * weight.to(acc)  # (C,)
            k = sum_g_xc * inv_std.square() / m  # (C,)
            b = -a * k
            c = a * (mean * k - sum_g / m)
            torch.addcmul(c.view(shape), x, b.view(shape), out=buf)
            grad_input = buf.addcmul_(g, a.view(shape))
            grad_input = grad_input if grad_input.dtype == input.dtype else \
                grad_input.to(input.dtype)
        grad_bias = None
        if needs[2]:
            grad_bias = sum_g.to(ctx.bias_dtype)
        return grad_input, grad_weight, grad_bias, None, None, None, None


class BatchNormEvalFunction(torch.autograd.Function):
    """Evaluation-mode batch norm with fixed statistics, one fused affine map
    ``y = x * scale + shift`` per channel (``bnlib.torch._stats.eval_affine``), whose
    gradients are taken from the unfolded form:

    .. math::

        \\frac{\\partial L}{\\partial x} = g\\, s, \\qquad
        \\frac{\\partial L}{\\partial \\gamma} = \\frac{\\sum g\\, (x - \\hat\\mu)}
            {\\sqrt{\\hat\\sigma^2 + \\epsilon}}, \\qquad
        \\frac{\\partial L}{\\partial \\beta} = \\textstyle\\sum g

    Taking the weight gradient through the folded shift, ``sum(g x) s/gamma - mu sum(g)
    s/gamma``, would subtract two numbers ``|mu| / sigma`` times larger than the result.
    The running statistics get no gradient (as in torch). The backward is written in
    differentiable tensor operations, so double backward works.

    Args (of ``apply``):
        input, running_mean, running_var, weight, bias, eps.

    Example:
        >>> x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        >>> w = torch.rand(3, dtype=torch.float64, requires_grad=True)
        >>> rm = torch.zeros(3, dtype=torch.float64)
        >>> rv = torch.ones(3, dtype=torch.float64)
        >>> args = (x, rm, rv, w, None, 1e-5)
        >>> torch.autograd.gradcheck(BatchNormEvalFunction.apply, args)
        True
    """

    @staticmethod
    def forward(ctx, input: Tensor, running_mean: Tensor, running_var: Tensor,
                weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
        shape = channel_shape(input.dim(), input.shape[1])
        acc = opmath_dtype(input.dtype)
        x = input.to(acc)
        scale, shift = eval_affine(running_mean.to(acc), running_var.to(acc),
                                   None if weight is None else weight.to(acc),
                                   None if bias is None else bias.to(acc), eps)
        out = torch.empty_like(x, memory_format=output_format(input))
        torch.addcmul(shift.view(shape), x, scale.view(shape), out=out)
        ctx.save_for_backward(input, running_mean, running_var, weight)
        ctx.eps, ctx.bias_dtype = eps, None if bias is None else bias.dtype
        return out if out.dtype == input.dtype else out.to(input.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        input, running_mean, running_var, weight = ctx.saved_tensors
        dims, shape = reduce_dims(input.dim()), channel_shape(input.dim(), input.shape[1])
        acc = opmath_dtype(input.dtype)
        g = grad_out.to(acc)
        inv_std = torch.rsqrt(running_var.to(acc) + ctx.eps)  # (C,)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            scale = inv_std if weight is None else inv_std * weight.to(acc)
            if _differentiable(grad_out):  # create_graph=True or vmap
                grad_input = (g * scale.view(shape)).to(input.dtype).contiguous(
                    memory_format=output_format(input))
            else:  # in torch's layout
                grad_input = empty_grad_input(input, acc)
                grad_input = torch.mul(g, scale.view(shape), out=grad_input).to(input.dtype)
        if weight is not None and ctx.needs_input_grad[3]:
            x_c = input.to(acc) - running_mean.to(acc).view(shape)
            grad_weight = ((g * x_c).sum(dim=dims) * inv_std).to(weight.dtype)
        if ctx.needs_input_grad[4]:
            grad_bias = g.sum(dim=dims).to(ctx.bias_dtype)
        return grad_input, None, None, grad_weight, grad_bias, None
