"""bnlib.torch's batch-norm family as a drop-in for torch.nn (2.13): the same results,
buffers, dtypes, memory formats and errors on the inputs torch accepts; at least torch's
float32 accuracy against a float64 computation of the same math; torch's own CPU bug on
channels_last-looking strides (issue 10, item 7); and the package's import boundary."""

import copy
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bnlib.torch as bt
from bnlib.audit import torch_channels_last_grad_bug
from bnlib.torch._errors import NormError, NormTypeError
from bnlib.torch.autograd import BatchNormEvalFunction, batch_norm_backward

F64 = torch.float64
EXACT = dict(rtol=1e-10, atol=1e-12)  # float64: the same math, different summation order


def test_bnlib_torch_never_imports_bnlib_experiments():
    code = (
        "import sys, bnlib.torch, bnlib.torch.sync, bnlib.torch.precise\n"
        "print([m for m in sys.modules if m.startswith('bnlib.experiments')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]", out


# ---------------------------------------------------------------- differential vs torch.nn


def _random_input(g, ndim, dtype=F64):
    sizes = [int(torch.randint(1, 4, (1,), generator=g)) for _ in range(ndim)]
    perm = torch.randperm(ndim, generator=g).tolist()
    x = torch.randn([sizes[p] for p in perm], generator=g, dtype=dtype)
    x = x.permute(*[perm.index(i) for i in range(ndim)])  # any dense layout
    if torch.rand(1, generator=g) < 0.3:  # a non-dense view
        x = torch.randn([2 * s for s in x.shape], generator=g, dtype=dtype)[
            tuple(slice(None, None, 2) for _ in range(ndim))
        ]
    return x


def _run_functional(fn, x, dy, training):
    c = x.shape[1]
    x = x.detach().requires_grad_()
    w = torch.linspace(0.5, 1.5, c, dtype=F64, requires_grad=True)
    b = torch.linspace(-1, 1, c, dtype=F64, requires_grad=True)
    rm, rv = torch.linspace(-1, 1, c, dtype=F64), torch.linspace(0.5, 2, c, dtype=F64)
    y = fn(x, rm, rv, w, b, training, 0.3, 1e-5)
    y.backward(dy)
    return [y, x.grad, w.grad, b.grad, rm, rv], (y.stride(), x.grad.stride())


@pytest.mark.parametrize("seed", range(8))
def test_functional_equals_torch_on_random_layouts(seed):
    """Outputs, every gradient and the running buffers equal torch's on a contiguous copy,
    and the strides of output and input gradient equal torch's on the same layout, for
    2-D to 5-D inputs of any layout (sizes 1 to 3), train and eval, with dy contiguous or
    in another layout. (On some layouts torch's own gradients are wrong; see
    test_torch_channels_last_grad_bug.)"""
    g = torch.Generator().manual_seed(seed)
    checked = 0
    for _ in range(150):
        x = _random_input(g, int(torch.randint(2, 6, (1,), generator=g)))
        training = bool(torch.rand(1, generator=g) < 0.6)
        if training and x.numel() // x.shape[1] == 1:
            continue
        dy = torch.randn(x.shape, generator=g, dtype=F64)
        if torch.rand(1, generator=g) < 0.5:  # dy in another layout than x
            dy = dy.transpose(0, -1).contiguous().transpose(0, -1)
        ref, _ = _run_functional(F.batch_norm, x.contiguous(), dy.contiguous(), training)
        _, ref_strides = _run_functional(F.batch_norm, x, dy, training)
        ours, strides = _run_functional(bt.batch_norm, x, dy, training)
        for a, o in zip(ref, ours):
            torch.testing.assert_close(o, a, **EXACT)
        assert strides[0] == ref_strides[0], (x.shape, x.stride(), training)
        if 1 not in x.shape:
            # With size-1 dims torch's kernels lay out the input gradient by rules bnlib
            # does not copy in every case (any layout is equally valid there).
            assert strides[1] == ref_strides[1], (x.shape, x.stride(), dy.stride(), training)
        checked += 1
    assert checked > 100


@pytest.mark.parametrize(
    "cls,shape",
    [
        (bt.BatchNorm1d, (5, 3)),
        (bt.BatchNorm1d, (4, 3, 2)),
        (bt.BatchNorm2d, (2, 3, 2, 2)),
        (bt.BatchNorm3d, (2, 3, 1, 2, 2)),
    ],
)
@pytest.mark.parametrize("momentum", [None, 0.0, 1.0, 0.3])
@pytest.mark.parametrize("affine,track", [(True, True), (False, True), (True, False)])
def test_module_sequence_state_dict_deepcopy_pickle_equal_torch(
    cls, shape, momentum, affine, track
):
    kwargs = dict(momentum=momentum, affine=affine, track_running_stats=track, dtype=F64)
    ours, ref = cls(3, **kwargs), getattr(nn, cls.__name__)(3, **kwargs)
    g = torch.Generator().manual_seed(0)
    for step, training in enumerate([True, True, False, True, False]):
        ours.train(training), ref.train(training)
        x = torch.randn(shape, generator=g, dtype=F64)
        torch.testing.assert_close(ours(x), ref(x), **EXACT)
        if step == 2:
            ours, ref = copy.deepcopy(ours), pickle.loads(pickle.dumps(ref))
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, **EXACT)
    fresh = cls(3, **kwargs).train(ref.training)
    fresh.load_state_dict(ref.state_dict())
    torch.testing.assert_close(fresh(x), ref(x), **EXACT)


def test_state_dict_without_num_batches_tracked_keeps_the_current_count_as_torch():
    x = torch.randn(8, 3)
    for strict, version in ((True, 1), (False, 2)):
        ours, ref = bt.BatchNorm1d(3), nn.BatchNorm1d(3)
        for bn in (ours, ref):
            for _ in range(3):
                bn(x)
            state = bn.state_dict()
            del state["num_batches_tracked"]
            state._metadata[""]["version"] = version
            bn.load_state_dict(state, strict=strict)
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3


# ------------------------------------------------------------------------- dtypes and errors

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("x_dtype", DTYPES)
@pytest.mark.parametrize("p_dtype", DTYPES)
def test_dtype_combinations_as_torch(x_dtype, p_dtype):
    """torch's CPU kernels accept a parameter dtype equal to the input's, or float32 for a
    half/bfloat16 input (CPU autocast's pattern: output in the input's dtype, buffers in
    float32); everything else is "mixed dtype (CPU)"."""
    x = torch.randn(16, 3, 4).to(x_dtype)
    ours, ref = bt.BatchNorm1d(3).to(p_dtype), nn.BatchNorm1d(3).to(p_dtype)
    try:
        expected = ref(x)
    except RuntimeError:
        with pytest.raises(NormError, match="mixed dtype"):
            ours(x)
        return
    out = ours(x)
    assert out.dtype == expected.dtype == x_dtype
    tol = dict(rtol=1e-2, atol=1e-2) if torch.finfo(x_dtype).bits == 16 else {}
    torch.testing.assert_close(out, expected, **tol)
    for name in ("running_mean", "running_var"):
        assert getattr(ours, name).dtype == p_dtype


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16])
def test_half_input_to_float32_module_keeps_accurate_float32_statistics(x_dtype):
    """Statistics of a bfloat16/half batch are accumulated in float32 from the exact input
    values: the running buffers are as close to the float64 statistics as torch's."""
    g = torch.Generator().manual_seed(0)
    x = (3 + 2 * torch.randn(256, 8, 6, generator=g)).to(x_dtype)
    exact = nn.BatchNorm1d(8, momentum=1.0, dtype=F64)
    exact(x.to(F64))
    errors = {}
    for name, bn in (
        ("ours", bt.BatchNorm1d(8, momentum=1.0)),
        ("torch", nn.BatchNorm1d(8, momentum=1.0)),
    ):
        y = bn(x)
        assert y.dtype == x_dtype and bn.running_var.dtype == torch.float32
        errors[name] = max(
            float((bn.running_mean - exact.running_mean).abs().max()),
            float((bn.running_var - exact.running_var).abs().max()),
        )
    assert errors["ours"] <= max(2 * errors["torch"], 1e-6), errors


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.bool, torch.uint8])
def test_integer_input_raises_torchs_exception_family(dtype):
    x = torch.ones(4, 3, dtype=dtype)
    with pytest.raises(NotImplementedError):
        nn.BatchNorm1d(3)(x)
    with pytest.raises(NotImplementedError) as info:
        bt.BatchNorm1d(3)(x)
    assert isinstance(info.value, NormTypeError)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("which", ["running_mean", "running_var"])
def test_functional_with_one_running_buffer_raises_as_torch(training, which):
    x = torch.randn(4, 3)
    buffers = {"running_mean": torch.zeros(3), "running_var": torch.ones(3)}
    args = [
        buffers["running_mean"] if which == "running_mean" else None,
        buffers["running_var"] if which == "running_var" else None,
    ]
    with pytest.raises((ValueError, RuntimeError)) as torch_error:
        F.batch_norm(x, *args, training=training)
    with pytest.raises(type(torch_error.value), match="running_mean and running_var"):
        bt.batch_norm(x, *args, training=training)
    assert torch.equal(buffers["running_mean"], torch.zeros(3))  # nothing was updated


@pytest.mark.parametrize("eps", [0.0, -1e-5])
@pytest.mark.parametrize("training", [True, False])
def test_eps_as_torch(eps, training):
    """torch refuses eps <= 0 in training and eps < 0 in evaluation."""
    x = torch.randn(4, 3)
    args = (x, torch.zeros(3), torch.ones(3), None, None, training, 0.1, eps)
    try:
        expected = F.batch_norm(*args)
    except ValueError as err:
        with pytest.raises(ValueError, match="eps must be"):
            bt.batch_norm(*args)
        with pytest.raises(type(err)):
            bt.BatchNorm1d(3, eps=eps).train(training)(x)
        return
    torch.testing.assert_close(bt.batch_norm(*args), expected)


def test_errors_are_caught_by_torch_style_except_clauses():
    cases = [
        lambda m: m.BatchNorm2d(3)(torch.randn(2, 3, 4)),  # wrong rank
        lambda m: m.BatchNorm2d(3)(torch.randn(2, 4, 5, 5)),  # wrong channels
        lambda m: m.BatchNorm1d(3)(torch.randn(1, 3)),  # one value per channel
        lambda m: m.BatchNorm1d(3, eps=0.0)(torch.randn(4, 3)),
    ]
    for case in cases:
        with pytest.raises((ValueError, RuntimeError)) as ref:
            case(nn)
        with pytest.raises(type(ref.value)) as ours:
            case(bt)
        assert isinstance(ours.value, NormError)


# ------------------------------------------------------------------------ double backward


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 2)])
def test_gradgradcheck(training, affine, shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=F64, requires_grad=True)
    w = (1 + torch.rand(3, generator=g, dtype=F64)).requires_grad_(affine)
    b = torch.rand(3, generator=g, dtype=F64).requires_grad_(affine)
    rm, rv = torch.rand(3, dtype=F64), 1 + torch.rand(3, dtype=F64)

    def fn(x, w, b):
        return bt.batch_norm(
            x,
            rm.clone(),
            rv.clone(),
            w if affine else None,
            b if affine else None,
            training,
            0.1,
            1e-5,
        )

    inputs = (x, w, b)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_fast_backward_equals_the_books_formula():
    """The in-place backward (no create_graph) and the differentiable one agree."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, 3, 5, generator=g, dtype=F64).to(memory_format=torch.channels_last)
    w = torch.rand(4, generator=g, dtype=F64, requires_grad=True)
    b = torch.rand(4, generator=g, dtype=F64, requires_grad=True)
    dy = torch.randn(x.shape, generator=g, dtype=F64)
    x.requires_grad_()
    fast = torch.autograd.grad(bt.BatchNormFunction.apply(x, w, b, 1e-5), (x, w, b), dy)
    book = batch_norm_backward(dy, x.detach(), w.detach(), 1e-5)
    for f, r in zip(fast, book):
        torch.testing.assert_close(f, r, **EXACT)


# ----------------------------------------------------------------- float32 accuracy vs torch

FLOOR = 1e-6  # about 8 float32 epsilons of the largest value: rounding of a few operations
FACTOR = 4  # bnlib and torch both round the float32 mean; which rounds luckier is chance


def _run(fn, x, rm, rv, w, b, training, dy):
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    rm, rv = rm.clone(), rv.clone()
    fn(x, rm, rv, w, b, training).backward(dy)
    return [t.detach().to(F64) for t in (x.grad, w.grad, b.grad, rm, rv)]


def _relative(value, ref):
    return float((value - ref).abs().max() / ref.abs().max().clamp(min=1e-30))


@pytest.mark.parametrize("shape", [(2048, 16), (8, 8, 6, 6)])
@pytest.mark.parametrize("offset", [0.0, 1e2, 1e4])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("api", ["functional", "module"])
def test_float32_accuracy_at_least_torchs(shape, offset, training, api):
    """Errors of the output and of every gradient, relative to the largest value, against a
    float64 computation of the same math on the same float32 inputs, for data ``offset +
    N(0, 1)`` (mean/std up to 1e4): bnlib's <= max(FACTOR * torch's, FLOOR). In eval mode
    the weight gradient is sum(g (x - mean)) / std, never taken through the folded shift."""
    g = torch.Generator().manual_seed(3)
    c = shape[1]
    x = (torch.randn(shape, generator=g, dtype=F64) + offset).float()
    dy = torch.randn(shape, generator=g).float()
    w, b = 1 + 0.1 * torch.randn(c, generator=g), 0.1 * torch.randn(c, generator=g)
    rm = (offset + 0.5 * torch.randn(c, generator=g, dtype=F64)).float().to(F64)
    rv = (0.5 + torch.rand(c, generator=g, dtype=F64)).float().to(F64)
    ref_y = F.batch_norm(x.to(F64), rm.clone(), rv.clone(), w.to(F64), b.to(F64), training)
    ref = _run(F.batch_norm, x.to(F64), rm, rv, w.to(F64), b.to(F64), training, dy.to(F64))
    errors = {}
    for name, lib in (("ours", bt), ("torch", nn)):
        if api == "module":
            bn = getattr(lib, "BatchNorm1d" if x.dim() == 2 else "BatchNorm2d")(c)
            bn.train(training)
            with torch.no_grad():
                bn.weight.copy_(w), bn.bias.copy_(b)
                bn.running_mean.copy_(rm), bn.running_var.copy_(rv)
            xx = x.detach().requires_grad_()
            y = bn(xx)
            y.backward(dy)
            got = [
                t.detach().to(F64)
                for t in (xx.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var)
            ]
        else:
            fn = bt.batch_norm if lib is bt else F.batch_norm
            y = fn(x, rm.float(), rv.float(), w, b, training)
            got = _run(fn, x, rm.float(), rv.float(), w, b, training, dy)
        errors[name] = [_relative(y.detach().to(F64), ref_y)] + [
            _relative(v, r) for v, r in zip(got, ref)
        ]
    names = ["output", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var"]
    for i, name in enumerate(names):
        ours, theirs = errors["ours"][i], errors["torch"][i]
        assert ours <= max(FACTOR * theirs, FLOOR), (name, ours, theirs)


def test_eval_weight_gradient_keeps_precision_at_large_mean_over_std():
    """At mean/std = 1e4 the eval-mode weight gradient through the folded shift would be
    about 1e4 * 2**-24 * sqrt(m) off; bnlib's is within a few float32 roundings."""
    g = torch.Generator().manual_seed(4)
    x = (1e4 + torch.randn(4096, 8, generator=g, dtype=F64)).float()
    dy = torch.randn(4096, 8, generator=g)
    rm, rv = x.to(F64).mean(0), x.to(F64).var(0)
    w = torch.ones(8, requires_grad=True)
    BatchNormEvalFunction.apply(x, rm.float(), rv.float(), w, None, 1e-5).backward(dy)
    exact = (dy.to(F64) * (x.to(F64) - rm.float().to(F64))).sum(0) / torch.sqrt(
        rv.float().to(F64) + 1e-5
    )
    assert _relative(w.grad.to(F64), exact) < 1e-5


# ------------------------------------------------------------- torch's own bug (item 7)


def test_torch_channels_last_grad_bug():
    """torch 2.13 on the CPU: a channels_last input whose size-1 dims carry unusual strides
    ((1, 1, 2, 2) where torch's own channels_last tensor has (6, 1, 6, 2)), with a contiguous
    dy, gets wrong BatchNorm2d gradients (bias.grad is not sum(dy)); the usual strides and a
    contiguous copy get the right ones, and so does bnlib. When this test fails on the
    torch assertion, torch has fixed the bug: drop the special case from the fuzz."""
    answers = torch_channels_last_grad_bug()
    right = answers["contiguous_copy"]
    torch.testing.assert_close(right["bias_grad"], right["sum_dy"])
    assert not torch.allclose(answers["torch"]["bias_grad"], right["bias_grad"], atol=1e-3)
    for key in ("input_grad", "weight_grad", "bias_grad"):
        torch.testing.assert_close(answers["bnlib"][key], right[key])
