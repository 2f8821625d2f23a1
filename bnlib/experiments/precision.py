"""Float64 experiments, so that training runs reproduce on every CPU.

A few hundred SGD steps amplify last-bit differences between CPU kernels (AVX-512 against
AVX2, say): in float32 a run on another CPU ends with a different test accuracy. In float64
the kernels' differences start about 1e-9 times smaller. That helps only if the run also
starts from the same bits on every CPU: the initial weights (drawn in float64 by
``bnlib.experiments.init.normal_``) and the data (:func:`double_split` of the same float32
values; draw random inputs with ``dtype=torch.float64``). Chapter 5's CNN, trained so for
200 steps of SGD with momentum under the baseline (SSE), AVX2 and AVX-512 kernels, ends
with the same accuracies on all three and losses that agree to about 1e-12. That is a
property checked for each experiment (its notebook passes nbval under
``scripts/other-cpu``), not a guarantee: a longer or more chaotic run can still amplify
float64 differences into a visible change.

:func:`double_split` gives the data in float64 and :func:`cast_like` builds models in the
split's dtype.
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
