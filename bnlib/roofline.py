"""The roofline model for batch normalization, and the grader of chapter 9's exercise.

A computation of arithmetic intensity ``I`` (flops per byte of memory traffic) on a
processor that does at most ``P`` flops per second and moves at most ``B`` bytes per
second cannot run faster than ``min(P, I * B)`` flops per second (Williams, Waterman and
Patterson, 2009). Batch normalization's counts, per value of the input:

* forward (training mode): 6 flops (1 for the mean, 3 for the variance, 2 for
  ``y = a_c x + b_c``);
* forward plus backward: 15 flops (9 more: ``sum(g)``, ``sum(g (x - mu))`` and
  ``dx = A_c g + B_c (x - mu) + D_c``).

Their traffic depends on the order in which a kernel walks memory (``TRAFFIC_PER_VALUE``):

* ``"two-pass"``: a statistics pass and an output pass, each walking the whole tensor in
  layout order, as ``bnlib.numpy.batch_norm_forward_fast`` does (plus one pilot block):
  forward 3 values (``x`` read twice, ``y`` written), forward plus backward 8 (5 more:
  ``x`` and ``g`` read twice, ``dx`` written) once the tensor does not fit in cache;
* ``"channel-blocked"``: one channel (or a group of channels) at a time, so that its
  values stay in cache between its statistics and its output. Channel ``c``'s output needs
  only channel ``c``'s statistics, so when one channel's values fit in cache, main memory
  sees each tensor once: forward 2 values (``x`` read, ``y`` written), forward plus
  backward 5 (3 more: ``x`` and ``g`` read, ``dx`` written). This is the least traffic of
  any implementation that reads its inputs from and writes its outputs to main memory.
"""
from __future__ import annotations

import contextlib
import tracemalloc
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from .audit import CheckResult

__all__ = ["FLOPS_PER_VALUE", "TRAFFIC_PER_VALUE", "intensity", "attainable",
           "check_lean_forward"]

#: Floating-point operations per input value, by pass.
FLOPS_PER_VALUE = {"forward": 6, "forward+backward": 15}
#: Memory traffic per input value, in units of one value (``S`` per tensor of ``S`` bytes),
#: by traffic scheme and pass (see the module docstring).
TRAFFIC_PER_VALUE = {"two-pass": {"forward": 3, "forward+backward": 8},
                     "channel-blocked": {"forward": 2, "forward+backward": 5}}


def intensity(pass_name: str, itemsize: int = 4, scheme: str = "two-pass") -> float:
    r"""Arithmetic intensity of batch normalization, flops per byte of traffic.

    .. math::

        I = \frac{\text{flops per value}}{\text{values moved per value} \times
        \text{itemsize}}

    Args:
        pass_name: ``"forward"`` or ``"forward+backward"``.
        itemsize: bytes per value. Default: ``4`` (float32).
        scheme: ``"two-pass"`` (two sweeps in layout order) or ``"channel-blocked"`` (a
            channel at a time, the least traffic). Default: ``"two-pass"``.

    Example:
        >>> intensity("forward"), intensity("forward", itemsize=8)
        (0.5, 0.25)
        >>> intensity("forward", scheme="channel-blocked")
        0.75
    """
    if pass_name not in FLOPS_PER_VALUE:
        raise ValueError(f"expected a pass in {sorted(FLOPS_PER_VALUE)} (got {pass_name!r})")
    if scheme not in TRAFFIC_PER_VALUE:
        raise ValueError(f"expected a scheme in {sorted(TRAFFIC_PER_VALUE)} (got {scheme!r})")
    if itemsize <= 0:
        raise ValueError(f"expected itemsize > 0 (got {itemsize})")
    return FLOPS_PER_VALUE[pass_name] / (TRAFFIC_PER_VALUE[scheme][pass_name] * itemsize)


def attainable(intensity_, bandwidth: float, peak: float):
    r"""The roofline: the highest flop rate a computation of intensity ``I`` can reach,

    .. math::

        \min(P,\; I \cdot B).

    Args:
        intensity_: flops per byte, a number or an array.
        bandwidth: ``B``, bytes per second.
        peak: ``P``, flops per second.

    Returns:
        Flops per second, the shape of ``intensity_``.

    Example:
        >>> float(attainable(0.5, bandwidth=10e9, peak=100e9))
        5000000000.0
        >>> attainable(np.array([1.0, 100.0]), 10e9, 100e9).tolist()
        [10000000000.0, 100000000000.0]
    """
    if bandwidth <= 0 or peak <= 0:
        raise ValueError(f"expected bandwidth > 0 and peak > 0 (got {bandwidth}, {peak})")
    return np.minimum(peak, np.asarray(intensity_, dtype=float) * bandwidth)


# (N, C) and (N, C, H, W) float32 inputs of 4 MiB: large enough that a
# full-size temporary dwarfs Python's own small allocations.
_LEAN_SHAPES = ((8192, 128), (64, 64, 16, 16), (16, 16, 64, 64))


def _lean_case(shape, seed):
    rng = np.random.default_rng(seed)
    c = shape[1]
    offset = rng.uniform(-3, 3, size=c).reshape((1, c) + (1,) * (len(shape) - 2))
    x = (offset + rng.uniform(0.5, 2, size=offset.shape) *
         rng.standard_normal(shape)).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, size=c).astype(np.float32)
    beta = rng.uniform(-0.5, 0.5, size=c).astype(np.float32)
    return x, gamma, beta


class _TorchUsed(Exception):
    """Raised inside the reader's function when it touches torch."""


class _NoTorch(TorchDispatchMode):
    """Refuse every torch operation, factories included: torch's CPU allocator does not
    report to ``tracemalloc``, so a temporary made by torch would go unseen."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        raise _TorchUsed(f"called torch ({func})")


def _refuse(name):
    def refuse(*args, **kwargs):
        raise _TorchUsed(f"called torch.{name}")
    return refuse


# Entry points that create a tensor from NumPy without a dispatched operation.
_TORCH_ENTRY_POINTS = ("from_numpy", "as_tensor", "tensor", "asarray", "frombuffer")


@contextlib.contextmanager
def _torch_blocked():
    saved = {name: getattr(torch, name) for name in _TORCH_ENTRY_POINTS}
    try:
        for name in saved:
            setattr(torch, name, _refuse(name))
        with _NoTorch():
            yield
    finally:
        for name, fn in saved.items():
            setattr(torch, name, fn)


def check_lean_forward(fn: Callable, tol: float = 1e-4,
                       max_allocated: float = 0.5) -> CheckResult:
    r"""Grade ``fn(x, gamma, beta, eps, out) -> out``, a training-mode batch-norm forward
    pass in NumPy that writes into ``out`` and makes no full-size temporary.

    For float32 ``x`` of shape ``(N, C)`` or ``(N, C, H, W)``, ``fn`` must return ``out``
    itself holding

    .. math::

        y = \gamma_c \frac{x - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}} + \beta_c

    within ``tol`` (absolute; outputs are of order 1) of
    ``torch.nn.functional.batch_norm`` run in float64 on the same values, and the peak of
    the memory it allocates (``tracemalloc``, which NumPy reports to) must stay below
    ``max_allocated`` times ``x.nbytes``: one input-sized temporary fails. The exercise is
    NumPy only: torch's allocator does not report to ``tracemalloc``, so every torch
    operation and ``torch.from_numpy``-like entry point is refused during the call.

    Args:
        fn: the reader's function.
        tol: largest allowed absolute difference. Default: ``1e-4`` (float32 outputs of
            order 1; a float32 running sum of the mean costs about 1e-5).
        max_allocated: allocation limit, in units of ``x.nbytes``. Default: ``0.5``.

    Returns:
        A :class:`~bnlib.audit.CheckResult`; ``value`` is the largest peak allocation in
        units of ``x.nbytes``.

    Example:
        >>> from bnlib.numpy import batch_norm_forward_fast
        >>> def lean(x, gamma, beta, eps, out):
        ...     return batch_norm_forward_fast(x, gamma, beta, eps, out=out)[0]
        >>> check_lean_forward(lean).passed
        True
    """
    worst_err, worst_peak, shapes = 0.0, 0.0, []
    for seed, shape in enumerate(_LEAN_SHAPES):
        x, gamma, beta = _lean_case(shape, seed)
        ref = F.batch_norm(torch.from_numpy(x).double(), None, None,
                           torch.from_numpy(gamma).double(),
                           torch.from_numpy(beta).double(), training=True,
                           eps=1e-5).numpy()
        out = np.full_like(x, np.nan)
        x_before = x.copy()
        tracemalloc.start()
        try:
            with _torch_blocked():
                result = fn(x, gamma, beta, 1e-5, out)
            peak = tracemalloc.get_traced_memory()[1] / x.nbytes
        except _TorchUsed as exc:
            return CheckResult("lean_forward", False,
                               f"FAILED: {exc}; write it in NumPy (torch's memory is "
                               "invisible to tracemalloc)")
        except Exception as exc:  # the reader's code: report, do not crash the checker
            return CheckResult("lean_forward", False,
                               f"FAILED: raised {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:80] if str(exc) else ''}")
        finally:
            tracemalloc.stop()
        if result is not out:
            return CheckResult("lean_forward", False,
                               "FAILED: return the array passed as out, written in place")
        if not np.array_equal(x, x_before):
            return CheckResult("lean_forward", False, "FAILED: changed the input x")
        err = float(np.max(np.abs(out.astype(np.float64) - ref)))
        if not np.isfinite(err):
            err = float("inf")
        worst_err, worst_peak = max(worst_err, err), max(worst_peak, peak)
        shapes.append(str(shape))
    over = ", ".join(shapes)
    if worst_err > tol:
        return CheckResult("lean_forward", False,
                           f"FAILED: largest |yours - torch| {worst_err:.1e} (tolerance "
                           f"{tol:.0e}) over shapes\n        {over}", worst_peak)
    if worst_peak >= max_allocated:
        return CheckResult("lean_forward", False,
                           f"FAILED: right values, but its peak allocation was "
                           f"{worst_peak:.1f} x the input's size\n"
                           f"        (limit {max_allocated} x): make no full-size temporary",
                           worst_peak)
    return CheckResult("lean_forward", True,
                       f"PASSED: largest |yours - torch| < {tol:.0e} over shapes\n"
                       f"        {over};\n"
                       f"        written into out, peak allocation below {max_allocated} x "
                       "the input's size", worst_peak)
