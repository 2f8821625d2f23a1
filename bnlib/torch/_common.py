"""Rules torch's CPU normalization kernels share, for the modules that are not batch norm
(private): the accumulation dtype, the dtypes they accept (all of them), and the
memory format of their outputs and input gradients."""
from __future__ import annotations

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format as _suggest

from ._errors import NormError, NormTypeError

__all__ = ["GradLayout", "centre", "check_dtypes", "opmath", "suggest_memory_format"]

_REDUCED = (torch.float16, torch.bfloat16)


def opmath(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are computed in: float32 for float16/bfloat16, else ``dtype``.

    Example:
        >>> opmath(torch.bfloat16)
        torch.float32
    """
    return torch.float32 if dtype in _REDUCED else dtype


def centre(x: Tensor, dims) -> Tensor:
    """``x - mean(x)`` over ``dims``, to the rounding of ``x - mean`` rather than of the mean.

    A float32 mean of values around ``mu`` is off by up to half an ulp of ``mu``; subtracting
    it shifts every centred value by that much, an error of ``ulp(mu) / std`` relative to
    the spread (6e-4 at mean/std 1e4). Subtracting the mean of the first residuals too
    (``d - mean(d)`` with ``d = x - mean(x)``, which is exact in real arithmetic) removes that
    shift, so the centred values are accurate to the rounding of their own size. It is the
    centring map applied twice, so its gradient is the centring map's.

    Example:
        >>> x = torch.tensor([[1e4 + 0.5, 1e4 - 0.5]])
        >>> centre(x, (1,))
        tensor([[ 0.5000, -0.5000]])
    """
    d = x - x.mean(dim=dims, keepdim=True)
    return d - d.mean(dim=dims, keepdim=True)


def suggest_memory_format(input: Tensor) -> torch.memory_format:
    """``Tensor.suggest_memory_format()`` of c10 (channels_last(_3d) for 4-D/5-D input whose
    strides look channels_last, with c10's rules for size-1 dims; else contiguous).

    Example:
        >>> suggest_memory_format(torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last))
        torch.channels_last
    """
    return _suggest(input) if input.dim() in (4, 5) else torch.contiguous_format


def check_dtypes(input: Tensor, *params: Tensor | None, op: str = "batch_norm") -> None:
    """Refuse the dtypes torch's CPU normalization kernels refuse (batch, instance, group,
    layer and RMS norm share the rule; the one home of this check).

    The input must be floating point (else :class:`~bnlib.torch._errors.NormTypeError`, torch's
    ``NotImplementedError``). The parameters and buffers given must share one dtype: the
    input's, or float32 for a float16/bfloat16 input (the mixed-precision pattern of CPU
    autocast: statistics and buffers in float32, output in the input's dtype). Anything else
    is torch's "mixed dtype (CPU)" ``RuntimeError``: a :class:`~bnlib.torch._errors.NormError`.

    Args:
        input: the tensor to normalize.
        params: weight, bias, running statistics; ``None`` entries are skipped.
        op: the operation's name, for the message. Default: ``"batch_norm"``.

    Example:
        >>> check_dtypes(torch.ones(2, dtype=torch.bfloat16), torch.ones(2), op="layer_norm")
    """
    if not input.is_floating_point():
        raise NormTypeError(f'"{op}" not implemented for {input.dtype}: expected a '
                            "floating-point input; convert it first, e.g. x.float()")
    dtypes = {p.dtype for p in params if p is not None}
    if not dtypes or dtypes == {input.dtype}:
        return
    if input.dtype in _REDUCED and dtypes == {torch.float32}:
        return
    allowed = f"{input.dtype}" + (" or all float32" if input.dtype in _REDUCED else "")
    raise NormError(f"mixed dtype (CPU): {op} got input of dtype {input.dtype} and parameters "
                    f"of dtypes {sorted(map(str, dtypes))}; the parameters must be {allowed}, "
                    "e.g. module.to(input.dtype)")


class GradLayout(torch.autograd.Function):
    """The identity, in ``memory_format``, whose backward returns the gradient in
    ``memory_format`` too: torch's kernels give the input gradient the output's layout,
    whatever the upstream gradient's layout. Its backward is a differentiable op, so double
    backward works.

    Example:
        >>> x = torch.randn(2, 3, 4, 4, requires_grad=True)
        >>> y = GradLayout.apply(x, torch.channels_last)
        >>> y.is_contiguous(memory_format=torch.channels_last)
        True
    """

    @staticmethod
    def forward(ctx, input: Tensor, memory_format: torch.memory_format) -> Tensor:
        ctx.memory_format = memory_format
        return input.clone(memory_format=memory_format)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad.contiguous(memory_format=ctx.memory_format), None
