"""Float64 experiments, so that training runs reproduce on every CPU.

A few hundred SGD steps amplify last-bit differences between CPU kernels (AVX-512 against
AVX2, say): in float32 a run on another CPU ends with a different test accuracy. The same
run in float64 starts from differences about 1e-9 times smaller, which the steps of this
book's experiments do not amplify to a visible change. :func:`double_split` gives the data
in float64 and :func:`cast_like` builds models in the split's dtype.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from .data import Split

__all__ = ["double_split", "cast_like"]


def double_split(split: Split) -> Split:
    """The same split with float64 inputs (labels unchanged).

    Example:
        >>> from bnlib.experiments import load_digits_split
        >>> double_split(load_digits_split()).x_val.dtype
        torch.float64
    """
    names = [n for n in ("x_train", "x_val", "x_test") if getattr(split, n) is not None]
    return dataclasses.replace(split, **{n: getattr(split, n).double() for n in names})


def cast_like(build: Callable[[], nn.Module], split: Split) -> Callable[[], nn.Module]:
    """A builder whose models have the floating dtype of ``split``'s inputs.

    Example:
        >>> from bnlib.experiments import load_digits_split, mlp
        >>> split = double_split(load_digits_split())
        >>> next(cast_like(lambda: mlp(depth=1), split)().parameters()).dtype
        torch.float64
    """
    dtype = split.x_train.dtype
    if not dtype.is_floating_point:
        raise ValueError(f"expected floating-point inputs (got {dtype})")
    return lambda: build().to(dtype)
