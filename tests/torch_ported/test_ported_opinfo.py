"""The OpInfo sample and error inputs of torch 2.13's common_methods_invocations.py for
``nn.functional.batch_norm`` / ``instance_norm`` / ``group_norm`` / ``layer_norm`` /
``rms_norm`` (``sample_inputs_batch_norm``, ``..._instance_norm``, ``..._group_norm``,
``..._layer_norm``, ``..._rms_norm``, ``error_inputs_group_norm``, ``error_inputs_rms_norm``
and, for layer_norm, ``error_inputs_native_layer_norm``'s cases), re-typed with the same
shapes and arguments, run on ``torch.nn.functional`` and on ``bnlib.torch``.

Per sample, as test_ops does for these OpInfos: the call runs in every OpInfo dtype (float32,
float64, float16, bfloat16); bnlib's output, and its in-place running-buffer updates, equal
torch's (test_ops compares against torch itself for these ops); in float64, gradcheck and
gradgradcheck with common_utils' defaults (fast_mode, batched grads) pass (test_fn_grad,
test_fn_gradgrad). Error inputs raise ``RuntimeError`` (ErrorInput's default type) matching
torch's regex.
"""

from __future__ import annotations

import itertools
from functools import partial

import pytest
import torch
from torch.testing import make_tensor

from conftest import DTYPE_TOL, IMPLS

S = 5  # opinfo.core.S
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
GRADCHECK = {"check_batched_grad": True, "fast_mode": True}


def _batch_norm(make, make_nograd):
    cases = (
        ((S, S, S), {"training": True, "momentum": 0.5, "eps": 0.6}),
        ((3, 2, 4), {"training": False, "momentum": -1.2}),
        ((3, 1), {"training": True, "momentum": 0.0}),
        ((0,), {"training": True}),
        ((0,), {"training": False}),
        ((3, 2, 3, 4), {"training": True, "momentum": -1.0, "eps": 0.5}),
        ((3, 2, 3, 4), {"training": False, "momentum": -1.0, "eps": 0.5}),
        ((2, 1), {}),
    )
    for shape, kwargs in cases:
        c = shape[1] if len(shape) > 1 else 0
        w, b = (make(c), make(c)) if c > 0 else (None, None)
        rm, rv = make_nograd(c, low=0), make_nograd(c, low=0)
        yield make(shape), (rm, rv, w, b), kwargs
    for training in (True, False, False):  # the last shape again, weight and bias given
        yield make(shape), (rm, rv, make(c), make(c)), {"training": training}
    yield make((1, 2, 3)), (None, None, None, None), {"training": True}


def _instance_norm(make, make_nograd):
    cases = (
        ((S, S, S), {"momentum": 0.5, "eps": 0.6}),
        ((S, S, S), {"momentum": 0.5, "eps": 0.6, "use_input_stats": True}),
        ((3, 2, 4), {"momentum": -1.2}),
        ((3, 2, 4), {"momentum": 0.0}),
        ((3, 2, 3, 4), {"momentum": -1.0, "eps": 0.5}),
        ((3, 2, 3, 4), {"momentum": -1.0, "eps": 0.5}),
    )
    for shape, kwargs in cases:
        c = shape[1]
        yield (
            make(shape),
            (),
            {
                "running_mean": make_nograd(c, low=0),
                "running_var": make_nograd(c, low=0),
                "weight": make(c),
                "bias": make(c),
                **kwargs,
            },
        )
    for wc in (c, None):  # "instance_norm assumes that if there's a bias, there's a weight"
        yield (
            make(shape),
            (),
            {
                "running_mean": make_nograd(c, low=0),
                "running_var": make_nograd(c, low=0),
                "weight": make(wc) if wc is not None else None,
                "bias": None,
            },
        )
    yield make((1, 2, 3)), (), {}


def _group_norm(make, make_nograd):
    cases = (
        ((1, 6, 3), 2, {"eps": 0.5}),
        ((2, 6, 3), 2, {"eps": -0.5}),
        ((1, 3), 1, {"eps": 1e-5}),
        ((0, 2), 1, {"eps": 1e-5}),
        ((S, S, S), 1, {"eps": 0.5}),
    )
    for shape, groups, kwargs in cases:
        c = shape[1] if len(shape) > 1 else 0
        wt, bt_ = make(c), make(c)
        for w, b in itertools.product([wt, None], [bt_, None]):
            yield make(shape), (groups,), {"weight": w, "bias": b, **kwargs}
    yield make((1, 2)), (1,), {}


_LN_CASES = (
    ((1, 2, 3), (1, 2, 3), {"eps": 0.5}),
    ((2, 2, 3), (2, 3), {"eps": -0.5}),
    ((1,), (1,), {}),
    ((1, 2), (2,), {}),
    ((0, 1), (1,), {}),
)


def _layer_norm(make, make_nograd):
    for shape, ns, kwargs in _LN_CASES:
        yield make(shape), (ns, make(ns), make(ns)), kwargs
    yield make((1, 2)), ((2,),), {}


def _rms_norm(make, make_nograd):
    for shape, ns, kwargs in _LN_CASES:
        yield make(shape), (ns, make(ns)), kwargs
    yield make((1, 2)), ((2,),), {}


OPS = {
    "batch_norm": (_batch_norm, {}),
    "instance_norm": (_instance_norm, {}),
    "group_norm": (_group_norm, {}),
    "layer_norm": (_layer_norm, {}),
    "rms_norm": (_rms_norm, {"high": 1000}),
}


def samples(op, dtype, requires_grad, seed=0):
    fn, extra = OPS[op]
    torch.manual_seed(seed)
    make = partial(make_tensor, device="cpu", dtype=dtype, requires_grad=requires_grad, **extra)
    make_nograd = partial(make_tensor, device="cpu", dtype=dtype, requires_grad=False, **extra)
    return list(fn(make, make_nograd))


def _clone(v):
    if torch.is_tensor(v):
        return v.detach().clone().requires_grad_(v.requires_grad)
    if isinstance(v, tuple):
        return tuple(_clone(a) for a in v)
    return v


def _call(impl, op, x, args, kwargs):
    return getattr(impl.F, op)(x, *args, **kwargs)


# Known divergences of bnlib.torch (open bugs, listed in tests/README.md): strict expected
# failures, so the entry must go when bnlib is fixed.
KNOWN_DIVERGENCES = {
    ("instance_norm", torch.float16): "D11: sample 0 ((5, 5, 5), momentum 0.5, eps 0.6, "
    "float16 weight/bias/buffers) is the first to fail: outputs up to one float16 ulp off "
    "torch's in 20 of 125 values, some beyond the f16 tolerance; the reduced-precision rounding of torch's kernel (statistics "
    "and affine map in float32, one final rounding) is not reproduced yet",
    (
        "instance_norm",
        torch.bfloat16,
    ): "D11: sample 1 is the first to fail, as for float16 (one bfloat16 ulp, 21 of 125 values)",
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("op", list(OPS))
def test_samples_run_and_match_torch(request, impl, op, dtype):
    if impl.name == "bnlib.torch" and (op, dtype) in KNOWN_DIVERGENCES:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_DIVERGENCES[op, dtype]))
    ref_impl = IMPLS["torch.nn"]
    for i, (x, args, kwargs) in enumerate(samples(op, dtype, requires_grad=False)):
        ref_args, ref_kwargs = _clone(args), {k: _clone(v) for k, v in kwargs.items()}
        out = _call(impl, op, x, args, kwargs)
        ref = _call(ref_impl, op, x, ref_args, ref_kwargs)
        tol = DTYPE_TOL[dtype]
        torch.testing.assert_close(out, ref, **tol, equal_nan=True, msg=f"sample {i}")
        for a, b in zip([*args, *kwargs.values()], [*ref_args, *ref_kwargs.values()]):
            if torch.is_tensor(a):  # running statistics updated in place as torch does
                torch.testing.assert_close(a, b, **tol, equal_nan=True, msg=f"sample {i}: buffer")


def _differentiable(x, args, kwargs):
    """The tensors gradcheck differentiates: input, then weight/bias (requires_grad)."""
    return [t for t in [x, *args, *kwargs.values()] if torch.is_tensor(t) and t.requires_grad]


@pytest.mark.parametrize("check", ["grad", "gradgrad"])
@pytest.mark.parametrize("op", list(OPS))
def test_fn_grad(impl, op, check):
    checker = torch.autograd.gradcheck if check == "grad" else torch.autograd.gradgradcheck
    for i, (x, args, kwargs) in enumerate(samples(op, torch.float64, requires_grad=True)):
        diff = _differentiable(x, args, kwargs)
        kw_ids = {k: id(v) for k, v in kwargs.items()}

        def fn(*tensors):
            sub = dict(zip([id(t) for t in diff], tensors))
            a = tuple(sub.get(id(v), v) for v in args)
            kw = {k: sub.get(kw_ids[k], v) for k, v in kwargs.items()}
            return _call(impl, op, sub[id(x)], a, kw)

        if x.numel() == 0:
            continue  # an empty input has no derivative to check
        if (
            impl.name == "torch.nn"
            and op == "group_norm"
            and kwargs.get("weight") is None
            and kwargs.get("bias") is not None
        ):
            continue  # torch 2.13's bug: raises "tensor does not have a device" (bnlib checked)
        assert checker(fn, diff, **GRADCHECK), f"{op} sample {i}"


ERRORS = [  # (op, input shape, args, regex); error type RuntimeError (ErrorInput's default)
    ("group_norm", (1,), (1,), "Expected at least 2 dimensions for input tensor but received"),
    (
        "group_norm",
        (2, 7, 4),
        (2,),
        "Expected number of channels in input to be divisible by "
        "num_groups, but got input of shape",
    ),
    (
        "rms_norm",
        (1, 2, 3),
        ((), None, 1e-5),
        "Expected normalized_shape to be at least 1-dimensional",
    ),
    (
        "rms_norm",
        (1, 2, 3),
        ((1, 2, 3), (1, 2), 1e-5),
        "Expected weight to be of same shape as normalized_shape",
    ),
    ("rms_norm", (2, 2, 3), ((2, 2), None, 1e-5), "Given normalized_shape="),
    (
        "layer_norm",
        (1, 2, 3),
        ((), None, None, 1e-5),
        "Expected normalized_shape to be at least 1-dimensional",
    ),
    (
        "layer_norm",
        (1, 2, 3),
        ((1, 2, 3), (1, 2), None, 1e-5),
        "Expected weight to be of same shape as normalized_shape",
    ),
    (
        "layer_norm",
        (1, 2, 3),
        ((1, 2, 3), None, (1, 2), 1e-5),
        "Expected bias to be of same shape as normalized_shape",
    ),
    ("layer_norm", (2, 2, 3), ((2, 2), None, None, 1e-5), "Given normalized_shape="),
]


@pytest.mark.parametrize("op,shape,args,regex", ERRORS)
def test_error_inputs(impl, op, shape, args, regex):
    torch.manual_seed(0)
    make = partial(make_tensor, device="cpu", dtype=torch.float32)
    # after normalized_shape, a tuple stands for a weight/bias tensor of that shape
    real = tuple(make(a) if isinstance(a, tuple) and i > 0 else a for i, a in enumerate(args))
    with pytest.raises(RuntimeError, match=regex):
        _call(impl, op, make(shape), real, {})
