"""``batch_norm`` written from tensor operations, with the signature of
``torch.nn.functional.batch_norm``."""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["batch_norm", "verify_batch_size"]


def verify_batch_size(size: torch.Size) -> None:
    """Refuse a training batch with one value per channel, in PyTorch's words."""
    values_per_channel = size[0] * math.prod(size[2:])
    if values_per_channel == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {size}")


def _check(input: Tensor, running_mean: Tensor | None, weight: Tensor | None,
           training: bool) -> None:
    if input.dim() < 2:
        raise ValueError(f"expected 2D or higher input of shape (N, C, ...) "
                         f"(got {input.dim()}D input)")
    if not input.is_floating_point():
        raise ValueError(f"expected a floating-point input (got {input.dtype}); "
                         "convert it first, e.g. x.float()")
    num_channels = input.shape[1]
    for name, t in (("running_mean", running_mean), ("weight", weight)):
        if t is not None and t.numel() != num_channels:
            raise ValueError(f"expected input with {t.numel()} channels to match {name} "
                             f"(got {num_channels} channels in input of shape "
                             f"{tuple(input.shape)})")
    if input.numel() == 0:
        raise ValueError(f"expected a non-empty input (got input of shape {tuple(input.shape)})")
    if training:
        verify_batch_size(input.size())
    elif running_mean is None:
        raise ValueError("running_mean and running_var are needed when training=False")


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalization over channel dimension 1, as ``torch.nn.functional.batch_norm``.

    With ``training=True`` the input is normalized with its own per-channel mean and biased
    variance, and the running statistics, when given, are updated in place (without autograd
    history) with the unbiased variance:
    ``running = (1 - momentum) * running + momentum * batch_statistic``.
    With ``training=False`` the running statistics are used.

    Args:
        input: ``(N, C)`` or ``(N, C, *spatial)``.
        running_mean, running_var: ``(C,)`` buffers or ``None``.
        weight, bias: ``(C,)`` affine parameters or ``None``.
        training: use batch statistics. Default: ``False``.
        momentum: weight of the new batch in the running averages. Default: ``0.1``.
        eps: added to the variance. Default: ``1e-5``.

    Example:
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> batch_norm(x, None, None, training=True, eps=0.0)
        tensor([[-1.],
                [ 1.]])
    """
    _check(input, running_mean, weight, training)
    dims = [0] + list(range(2, input.dim()))
    shape = [1, input.shape[1]] + [1] * (input.dim() - 2)
    if training:
        mean = input.mean(dim=dims)  # (C,)
        var = (input - mean.view(shape)).square().mean(dim=dims)  # (C,) biased, two-pass
        if running_mean is not None or running_var is not None:
            n = input.numel() // input.shape[1]
            with torch.no_grad():
                if running_mean is not None:
                    running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                if running_var is not None:
                    running_var.mul_(1 - momentum).add_(var.detach() * (n / (n - 1)),
                                                        alpha=momentum)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
        if weight is not None:
            out = out * weight.view(shape)
        if bias is not None:
            out = out + bias.view(shape)
        return out
    # Evaluation: a fixed per-channel affine map y = x * scale + shift (what folding uses).
    scale = 1.0 / torch.sqrt(running_var + eps)  # (C,)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale if bias is None else bias - running_mean * scale  # (C,)
    return torch.addcmul(shift.view(shape), input, scale.view(shape))  # one fused x*s+t
