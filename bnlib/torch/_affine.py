"""The learnable per-feature scale (``weight``, gamma) and shift (``bias``, beta) that every
normalization module of :mod:`bnlib.torch` shares, registered as ``torch.nn`` does."""
from __future__ import annotations

import torch
from torch import nn


def register_affine(module: nn.Module, shape, affine: bool, bias: bool = True,
                    device=None, dtype=None) -> None:
    """Register ``weight`` (and ``bias`` unless ``bias=False``) of ``shape`` on ``module``,
    or both as ``None`` parameters when ``affine=False``, so ``state_dict`` keys match torch."""
    factory = {"device": device, "dtype": dtype}
    weight = nn.Parameter(torch.empty(shape, **factory)) if affine else None
    shift = nn.Parameter(torch.empty(shape, **factory)) if affine and bias else None
    module.register_parameter("weight", weight)
    module.register_parameter("bias", shift)


def reset_affine(module: nn.Module) -> None:
    """Scale 1 and shift 0: the normalization starts as a pure standardization."""
    if module.weight is not None:
        nn.init.ones_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
