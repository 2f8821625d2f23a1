"""PyTorch's ``TestModule`` (test/test_modules.py, torch 2.13) for the normalization modules,
driven by the ``module_inputs_torch_nn_*`` / ``module_error_inputs_torch_nn_*`` functions of
``torch/testing/_internal/common_modules.py`` (the inputs re-typed here, same shapes, arguments
and descriptions), run on ``torch.nn`` (proves the port) and on ``bnlib.torch``.

Ported: test_forward (with its reference functions and the ``.float()``/``.double()`` check),
test_factory_kwargs, test_repr, test_pickle, test_non_contiguous_tensors, test_grad,
test_gradgrad, test_memory_format, test_if_train_and_eval_modes_differ, test_errors. Left out:
test_multiple_device_transfer and test_cpu_gpu_parity (CUDA only), test_device_ctx_init (meta
device), test_check_inplace (no ``inplace`` argument). The ModuleInfo's dtypes, train/eval
modes and CPU skips are kept (GroupNorm: all float dtypes and atol=rtol=1e-4 for float32
memory-format; InstanceNorm and LayerNorm: no memory-format test).

One addition, marked ``# bnlib:``: the bnlib run also compares its output with torch.nn's on
the same input, so a wrong-but-self-consistent module cannot pass.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from functools import partial
from itertools import product

import pytest
import torch
from torch.testing import make_tensor

from conftest import DTYPE_TOL, IMPLS, TOL

F32, F64 = torch.float32, torch.float64
ALL_FP = (F32, F64, torch.float16, torch.bfloat16)


@dataclass
class MI:
    """One ModuleInput: constructor args/kwargs, forward input shape, description."""

    args: tuple
    shape: tuple
    desc: str = ""
    kwargs: dict = field(default_factory=dict)
    reference: str | None = None  # "no_batch_dim" or "rms_norm"


def _bn1d():
    return [
        MI((10,), (4, 10), "affine"),
        MI((5,), (4, 5, 3), "3d_input"),
        MI((10, 1e-3, None), (4, 10), "affine_simple_average"),
        MI((10, 1e-3, 0.3, False), (4, 10), "not_affine"),
        MI((10, 1e-3, 0.3, True, False), (4, 10), "not_tracking_stats"),
        MI((5, 1e-3, 0.3, False), (4, 5, 3), "3d_input_not_affine"),
        MI((5, 1e-3, 0.3, False), (0, 5, 9), "zero_batch"),
        MI((10,), (4, 10), "affine_not_bias", {"bias": False}),
    ]


def _bnnd(spatial, momentum, tag):
    s = (2, 3) + spatial
    return [
        MI((3,), s, ""),
        MI((3, 1e-3, None), s, f"{tag}_simple_average"),
        MI((3, 1e-3, momentum), s, "momentum"),
        MI((3, 1e-3, momentum, False), s, "not_affine"),
        MI((3, 1e-3, momentum, True, False), s, "not_tracking_stats"),
        MI((5, 1e-3, 0.3, False), (0, 5) + (2,) * len(spatial), "zero_batch"),
        MI((3,), s, "affine_not_bias", {"bias": False}),
    ]


def _group_norm():
    return [
        MI((3, 6, 1e-3), (4, 6, 5), "1d_affine"),
        MI((3, 6, 1e-3), (4, 6, 5), "1d_affine_not_bias", {"bias": False}),
        MI((3, 12, 1e-3), (4, 12), "1d_affine_GN"),
        MI((1, 6, 1e-3), (150, 6), "1d_affine_large_batch"),
        MI((5, 5, 1e-3, False), (4, 5, 5), "1d_no_affine_IN"),
        MI((1, 10, 1e-3, False), (4, 10), "1d_no_affine_LN"),
        MI((3, 6, 1e-3), (4, 6, 2, 3), "2d_affine"),
        MI((3, 9, 1e-3), (4, 9, 2, 3), "2d_affine_not_bias", {"bias": False}),
        MI((3, 3, 1e-3, False), (4, 3, 2, 3), "2d_no_affine_IN"),
        MI((1, 3, 1e-3, False), (4, 3, 2, 3), "2d_no_affine_LN"),
    ]


def _instance_norm(n):
    no_batch = {1: (3, 15), 2: (3, 6, 6), 3: (3, 4, 4, 4)}[n]
    batch = (4,) + no_batch
    return [
        MI((3, 1e-3, 0.3), batch, ""),
        MI((3, 1e-3, 0.3, False, True), batch, "tracking_stats"),
        MI((3, 1e-3, 0.3), no_batch, "tracking_stats_no_batch_dim", reference="no_batch_dim"),
        MI((3, 1e-3, 0.3, False, True), no_batch, "no_batch_dim", reference="no_batch_dim"),
        MI((3, 1e-3, 0.3), batch, "affine", {"affine": True}),
        MI((3, 1e-3, 0.3), batch, "affine_not_bias", {"affine": True, "bias": False}),
    ]


def _layer_norm(reference=None):
    out = [
        MI(([5], 1e-3), (4, 5, 5), "1d_elementwise_affine", reference=reference),
        MI(([5], 1e-3), (128, 5, 5), "1d_elementwise_affine_large_batch", reference=reference),
        MI(([5], 1e-3, False), (4, 5, 5), "1d_no_elementwise_affine", reference=reference),
        MI(([2, 2, 5], 1e-3), (4, 2, 2, 5), "3d_elementwise_affine", reference=reference),
        MI(
            ([2, 2, 5], 1e-3, False), (4, 2, 2, 5), "3d_no_elementwise_affine", reference=reference
        ),
        MI(([5], 1e-3), (0, 5), "1d_empty_elementwise_affine", reference=reference),
    ]
    if reference is None:  # LayerNorm only
        out.append(
            MI(
                ([2, 2, 5], 1e-3),
                (4, 2, 2, 5),
                "3d_elementwise_affine_no_bias",
                {"elementwise_affine": True, "bias": False},
            )
        )
    return out


# name -> (inputs, dtypes, train_and_eval_differ, memory-format test on CPU?, its tolerance)
MODULES = {
    "BatchNorm1d": (_bn1d(), (F32, F64), True, True, None),
    "BatchNorm2d": (_bnnd((6, 6), 0.8, "2d"), (F32, F64), True, True, None),
    "BatchNorm3d": (_bnnd((4, 4, 4), 0.7, "3d"), (F32, F64), True, True, None),
    "GroupNorm": (_group_norm(), ALL_FP, False, True, {F32: dict(atol=1e-4, rtol=1e-4)}),
    "InstanceNorm1d": (_instance_norm(1), (F32, F64), True, False, None),
    "InstanceNorm2d": (_instance_norm(2), (F32, F64), True, False, None),
    "InstanceNorm3d": (_instance_norm(3), (F32, F64), True, False, None),
    "LayerNorm": (_layer_norm(), (F32, F64), False, False, None),
    "RMSNorm": (_layer_norm("rms_norm"), (F32, F64), False, True, None),
}


def _cases(dtypes=None):
    """(module name, dtype, training) as @modules generates them: both modes only where
    train_and_eval_differ."""
    out = []
    for name, (_, dts, differ, _, _) in MODULES.items():
        for dt in dts:
            if dtypes is not None and dt not in dtypes:
                continue
            for training in (True, False) if differ else (True,):
                out.append(
                    pytest.param(
                        name,
                        dt,
                        training,
                        id=f"{name}-{str(dt)[6:]}-{'train' if training else 'eval'}",
                    )
                )
    return out


def _cls(impl, name):
    cls = getattr(impl.nn, name, None)
    if cls is None:
        pytest.fail(f"{impl.name} has no {name}")
    return cls


def _inputs(name, dtype, requires_grad=False, seed=0):
    """The module inputs with seeded ``make_tensor`` data (torch draws them unseeded)."""
    torch.manual_seed(seed)
    return [
        (mi, make_tensor(mi.shape, device="cpu", dtype=dtype, requires_grad=requires_grad))
        for mi in MODULES[name][0]
    ]


def _build(impl, name, mi, dtype, training):
    m = _cls(impl, name)(*mi.args, **mi.kwargs)
    m.to("cpu").to(dtype)
    m.train(training)
    return m


def _reference(mi, m, x):
    if mi.reference == "no_batch_dim":  # common_modules.no_batch_dim_reference_fn
        return m(x.unsqueeze(0)).squeeze(0)
    if mi.reference == "rms_norm":  # module_inputs_torch_nn_RMSNorm.rms_norm_reference_fn
        dims = [x.ndim - i - 1 for i in range(len(m.normalized_shape))]
        up = x.float()
        result = up * torch.rsqrt(up.pow(2).mean(dim=dims, keepdim=True) + m.eps)
        if m.weight is not None:
            result *= m.weight
        return result.type_as(x)
    return None


_DEFAULT = {
    F32: (1.3e-6, 1e-5),
    F64: (1e-7, 1e-7),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}  # torch.testing's (rtol, atol) per dtype


def assert_equal(a, b, msg=None, **tol):
    """TestModule's ``assertEqual``: without explicit tolerances, the dtype's default raised to
    the class's ``precision = rel_tol = 1e-5`` (TestCase takes the larger)."""
    if not tol:
        rtol, atol = _DEFAULT[b.dtype]
        tol = {"rtol": max(rtol, TOL["f32"]["rtol"]), "atol": max(atol, TOL["f32"]["atol"])}
    torch.testing.assert_close(a, b, msg=msg, **tol)


def _assert_params_and_buffers_are(m, dtype):
    for kind, items in (("Parameter", m.named_parameters()), ("Buffer", m.named_buffers())):
        for n, t in items:
            assert t.device == torch.device("cpu"), f"{kind} {n} on {t.device}"
            if t.dtype.is_floating_point:
                assert t.dtype == dtype, f"{kind} {n} is {t.dtype}, expected {dtype}"


@pytest.mark.parametrize("name,dtype,training", _cases())
def test_forward(impl, name, dtype, training):
    for mi, x in _inputs(name, dtype):
        m = _build(impl, name, mi, dtype, training)
        out = m(x)
        ref = _reference(mi, m, x)
        if ref is not None:
            assert_equal(out, ref, msg=mi.desc)
        if impl.name == "bnlib.torch":  # bnlib: equal to torch.nn on the same input
            tm = _build(IMPLS["torch.nn"], name, mi, dtype, training)
            tm.load_state_dict(_build(impl, name, mi, dtype, training).state_dict())
            torch.testing.assert_close(out, tm(x), **DTYPE_TOL[dtype], msg=mi.desc)
            assert out.dtype == tm(x).dtype and out.stride() == tm(x).stride(), mi.desc
        if dtype in (F32, F64):
            (m.float() if dtype == F32 else m.double())
            m(x)
            _assert_params_and_buffers_are(m, dtype)


@pytest.mark.parametrize("name,dtype,training", _cases())
def test_factory_kwargs(impl, name, dtype, training):
    for mi, _ in _inputs(name, dtype):
        m = _cls(impl, name)(*mi.args, **mi.kwargs, device="cpu", dtype=dtype)
        m.train(training)
        _assert_params_and_buffers_are(m, dtype)


@pytest.mark.parametrize("name,dtype,training", _cases())
def test_repr(impl, name, dtype, training):
    for mi, _ in _inputs(name, dtype):
        m = _build(impl, name, mi, dtype, training)
        m.__repr__()
        str(m)
        if impl.name == "bnlib.torch":  # bnlib: the same text as torch's
            tm = _build(IMPLS["torch.nn"], name, mi, dtype, training)
            assert repr(m) == repr(tm), mi.desc


@pytest.mark.parametrize("name,dtype,training", _cases())
def test_pickle(impl, name, dtype, training):
    for mi, x in _inputs(name, dtype):
        m = _build(impl, name, mi, dtype, training)
        out = m(x)
        f = io.BytesIO()
        torch.save(m, f)
        f.seek(0)
        m_copy = torch.load(f, weights_only=False)
        assert_equal(m_copy(x), out, msg=mi.desc)


def _non_contiguous(t):
    out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
    out.requires_grad = t.requires_grad
    return out


@pytest.mark.parametrize("name,dtype,training", _cases())
def test_non_contiguous_tensors(impl, name, dtype, training):
    for mi, x in _inputs(name, dtype, requires_grad=True):
        m = _build(impl, name, mi, dtype, training)
        x.retain_grad()
        default_output = m(x)
        grad_output = default_output.clone().detach_().normal_()
        default_output.backward(grad_output, retain_graph=True)
        default_input_grad = copy.deepcopy(x.grad)
        default_param_grad = copy.deepcopy([p.grad for p in m.parameters()])
        nc_x, nc_grad = _non_contiguous(x), _non_contiguous(grad_output)
        for inp, g_out in product([x, nc_x], [grad_output, nc_grad]):
            inp.grad = None
            for p in m.parameters():
                p.grad = None
            out = m(inp)
            out.backward(copy.deepcopy(g_out), retain_graph=True)
            assert_equal(out, default_output, msg=mi.desc)
            assert_equal(inp.grad, default_input_grad, **TOL["noncontig_grad"], msg=mi.desc)
            for a, b in zip([p.grad for p in m.parameters()], default_param_grad, strict=True):
                assert_equal(a, b, msg=mi.desc)


def _gradients(impl, name, training, check):
    """_test_gradients_helper: the total derivative, then each parameter alone."""
    for mi, x in _inputs(name, F64, requires_grad=True):
        m = _build(impl, name, mi, F64, training)
        params = tuple(m.parameters())

        def fn(*flat):
            return m(flat[0])

        assert check(fn, (x,) + params), mi.desc
        old = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad = False
        for p, was in zip(params, old):
            p.requires_grad = was
            assert check(fn, (x,) + params), f"{mi.desc}: partial derivative"
            p.requires_grad = False
        for p, was in zip(params, old):
            p.requires_grad = was


# torch.testing._internal.common_utils.gradcheck/gradgradcheck's defaults
GRADCHECK = {"check_batched_grad": True, "fast_mode": True}


@pytest.mark.parametrize("name,dtype,training", _cases((F64,)))
def test_grad(impl, name, dtype, training):
    _gradients(impl, name, training, partial(torch.autograd.gradcheck, **GRADCHECK))


# torch.testing._internal.common_utils.gradcheck/gradgradcheck's defaults
GRADCHECK = {"check_batched_grad": True, "fast_mode": True}


@pytest.mark.parametrize("name,dtype,training", _cases((F64,)))
def test_gradgrad(impl, name, dtype, training):
    _gradients(impl, name, training, partial(torch.autograd.gradgradcheck, **GRADCHECK))


def _memory_formats(x):
    if x.dim() == 4:
        return [torch.contiguous_format, torch.channels_last], [
            torch.preserve_format,
            torch.contiguous_format,
            torch.channels_last,
        ]
    if x.dim() == 5:
        return [torch.contiguous_format, torch.channels_last_3d], [
            torch.preserve_format,
            torch.contiguous_format,
            torch.channels_last_3d,
        ]
    return [torch.contiguous_format], [torch.preserve_format, torch.contiguous_format]


def _check_out_memory_format(t, input_format):
    if t.dim() == 4 and input_format == torch.channels_last:
        assert t.is_contiguous(memory_format=torch.channels_last)
    elif t.dim() == 5 and input_format == torch.channels_last_3d:
        assert t.is_contiguous(memory_format=torch.channels_last_3d)
    else:
        assert t.is_contiguous()


@pytest.mark.parametrize("name,dtype,training", [c for c in _cases() if MODULES[c.values[0]][3]])
def test_memory_format(impl, name, dtype, training):
    tol = (MODULES[name][4] or {}).get(dtype, {})
    for mi, x in _inputs(name, dtype, requires_grad=True):
        m = _build(impl, name, mi, dtype, training)
        desired = m(x)
        if training:
            params = tuple(m.parameters())
            ref_grad_out = torch.rand_like(desired)
            ref_grads = torch.autograd.grad(desired, (x,) + params, ref_grad_out)
        input_formats, module_formats = _memory_formats(x)
        for in_fmt in input_formats:
            xf = x.clone().to(memory_format=in_fmt).detach().requires_grad_(True)
            for mod_fmt in module_formats:
                m.to(memory_format=mod_fmt)
                out = m(xf)
                if in_fmt != torch.contiguous_format or mod_fmt != torch.contiguous_format:
                    assert_equal(out, desired, **tol, msg=mi.desc)
                _check_out_memory_format(out, in_fmt)
                if training:
                    params = tuple(m.parameters())
                    g = torch.empty_like(out).copy_(ref_grad_out)
                    grads = torch.autograd.grad(out, (xf,) + params, g)
                    if in_fmt != torch.contiguous_format or mod_fmt != torch.contiguous_format:
                        for a, b in zip(grads, ref_grads, strict=True):
                            assert_equal(a, b, **tol, msg=mi.desc)
                    for gi in grads:
                        _check_out_memory_format(gi, in_fmt)


@pytest.mark.parametrize("name", [n for n, v in MODULES.items() if not v[2]])
def test_if_train_and_eval_modes_differ(impl, name):
    """ModuleInfo says train_and_eval_differ=False: forward must not read ``training``."""
    for mi, x in _inputs(name, F32):
        m = _build(impl, name, mi, F32, True)
        delattr(m, "training")
        try:
            m(x)
        except AttributeError as e:
            assert "'training'" not in str(e), f"{name} reads self.training: {e}"
            raise


ERRORS = [  # module_error_inputs_torch_nn_BatchNorm1d_2d_3d and _GroupNorm
    (name, "forward", (10,), {"eps": eps}, shape, ValueError, "eps must be positive")
    for name, shape in (
        ("BatchNorm1d", (2, 10)),
        ("BatchNorm2d", (2, 10, 5, 5)),
        ("BatchNorm3d", (2, 10, 4, 4, 4)),
    )
    for eps in (-1.0, 0.0)
] + [
    (
        "GroupNorm",
        "construction",
        (3, 10),
        {},
        None,
        ValueError,
        r"num_channels \(10\) must be divisible by num_groups \(3\)",
    ),
    (
        "GroupNorm",
        "construction",
        (5, 13),
        {},
        None,
        ValueError,
        r"num_channels \(13\) must be divisible by num_groups \(5\)",
    ),
]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name,on,args,kwargs,shape,error,regex", ERRORS)
def test_errors(impl, name, on, args, kwargs, shape, error, regex, dtype):
    """test_errors runs in training mode (the default) for the error inputs."""
    if on == "construction":
        with pytest.raises(error, match=regex):
            _cls(impl, name)(*args, **kwargs)
        return
    m = _cls(impl, name)(*args, **kwargs)
    torch.manual_seed(0)
    with pytest.raises(error, match=regex):
        m(make_tensor(shape, device="cpu", dtype=dtype))
