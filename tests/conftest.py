"""Helpers shared by the unit tests: one thread, the digits split, a bnlib/torch module pair
with equal parameters, the implementation fixture ``impl`` and one tolerance table.

Every tolerance used to compare bnlib with torch lives in :data:`TOL`, with the reason for its
size; tests take ``TOL["f64"]`` etc. instead of typing numbers.
"""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import bnlib.torch as bt

# name -> (rtol, atol, why this size)
_TOLERANCES = {
    "exact": (0.0, 0.0, "the same operations in the same order: bit-for-bit equal"),
    "f64": (
        1e-9,
        1e-9,
        "float64, different summation order: ~1e-15 relative per op, "
        "amplified by at most 1e6 for the ill-conditioned cases the tests use",
    ),
    "f64_tight": (1e-12, 1e-12, "float64 on well-conditioned data (O(1) mean and std)"),
    "f32": (
        1e-5,
        1e-5,
        "float32 (eps 1.2e-7), reductions over <= 1e4 values with different "
        "order: torch's own TestModule precision (precision = rel_tol = 1e-5)",
    ),
    "f16": (1e-3, 1e-3, "float16 output rounding (eps 9.8e-4): one ulp of the result"),
    "bf16": (
        1.6e-2,
        1e-2,
        "bfloat16 output rounding (eps 7.8e-3): torch.testing's default for bfloat16",
    ),
    "noncontig_grad": (
        0.0,
        1e-4,
        "torch's test_non_contiguous_tensors compares input gradients with atol=1e-4, rtol=0",
    ),
}
TOL = {k: {"rtol": r, "atol": a} for k, (r, a, _) in _TOLERANCES.items()}
TOL_REASON = {k: why for k, (_, _, why) in _TOLERANCES.items()}
DTYPE_TOL = {
    torch.float64: TOL["f64"],
    torch.float32: TOL["f32"],
    torch.float16: TOL["f16"],
    torch.bfloat16: TOL["bf16"],
}

IMPLS = {
    "torch.nn": types.SimpleNamespace(name="torch.nn", nn=nn, F=nn.functional),
    "bnlib.torch": types.SimpleNamespace(name="bnlib.torch", nn=bt, F=bt),
}


@pytest.fixture(params=list(IMPLS), ids=list(IMPLS))
def impl(request):
    """The implementation under test: ``impl.nn`` holds the module classes (``torch.nn`` or
    ``bnlib.torch``), ``impl.F`` the functions (``torch.nn.functional`` or ``bnlib.torch``).
    Tests ported from PyTorch run on both: the torch.nn run proves the port right."""
    return IMPLS[request.param]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is faster than two on a shared machine, and results do not
    depend on the thread count. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits():
    """The seeded digits split (flat 64-pixel rows)."""
    from bnlib.experiments import load_digits_split

    return load_digits_split()


@pytest.fixture(scope="session")
def digit_images():
    """The seeded digits split as ``(N, 1, 8, 8)`` images."""
    from bnlib.experiments import load_digits_split

    return load_digits_split(images=True)


def make_pair(name, *args, dtype=torch.float64, seed=0, **kwargs):
    """``(bnlib module, torch.nn module)`` of class ``name`` built with the same arguments,
    with the same random (non-trivial) parameters, so they must compute the same function."""
    ours = getattr(bt, name)(*args, **kwargs, dtype=dtype)
    ref = getattr(nn, name)(*args, **kwargs, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype))
    ref.load_state_dict(ours.state_dict())
    return ours, ref
