"""Differential fuzz of bnlib against torch.nn 2.13 (and a float64 truth).

Each case ``i`` is one seeded random configuration; ``run_case(i)`` returns the list of
divergences it finds (empty: the case passes). Kinds of case:

* ``module``: BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d, GroupNorm, LayerNorm, RMSNorm built
  with random flags (affine, bias, track_running_stats, momentum None/0/1/random, eps),
  module dtype float64/float32/float16/bfloat16, input dtype equal to it or float16/bfloat16
  into a float32 module (CPU autocast's pattern) or a random one; shapes with size-1 and
  size-2 dims; contiguous, channels_last, permuted, sliced, as_strided-with-size-1-dims and
  expanded inputs; upstream gradients contiguous or in the input's layout; a train/eval
  sequence of 1-3 steps. After each step: outputs, input and parameter gradients
  (``torch.autograd.grad``), buffers: values, dtypes, shapes, strides (of the dims longer
  than 1). Then, at random: a ``state_dict`` round trip both ways (strict, and without
  ``num_batches_tracked`` as an old checkpoint), ``copy.deepcopy`` and pickle, double
  backward (float64).
* ``functional``: ``batch_norm`` (any combination of running buffers, weight, bias,
  training, momentum, eps), ``instance_norm``, ``group_norm``, ``layer_norm``, ``rms_norm``,
  including the in-place buffer updates.
* ``bad``: a module or functional case with one bad argument (wrong rank, wrong channel
  count, integer/boolean input, mixed dtypes, eps <= 0, one value per channel or group, one
  running buffer, a normalized_shape the input does not end in, a parameter of the wrong
  size, groups not dividing channels).
* ``numpy``: :class:`bnlib.numpy.BatchNorm` against ``torch.nn.BatchNorm*d`` in float64
  (train/eval sequences, running statistics, ``backward``), the NumPy batch/layer/group-norm
  forward and backward in float64 against torch, and the float32 batch-norm forward (teaching
  and fast) on inputs with large mean/std ratios against a float64 truth.

Errors: where torch raises ``ValueError``, ``RuntimeError``, ``NotImplementedError``,
``IndexError`` or ``TypeError``, bnlib must raise an exception that is an instance of every
one of these that torch's is (so any ``except`` clause written for torch catches it); where
torch does not raise, bnlib must not.

Tolerances (per tensor, errors relative to the tensor's largest magnitude ``max|truth|``):

* float64: ``|bnlib - torch| <= 1e-9`` (float64 eps 2.2e-16; summation orders differ, and
  ill-conditioned cases such as a mean/std ratio of 1e4 cost up to ~1e-12); second
  derivatives ``1e-7`` (terms in 1/std^3). Where torch's own float32 result shows the
  problem is ill-conditioned, the tolerance is 4x torch's float32 error scaled by
  eps(float64)/eps(float32).
* Gradients that vanish by cancellation (one value per group, so x_hat = 0) are measured
  relative to the size of the cancelling terms (``natural_scales``), not to themselves.
* Strides are compared for outputs and first derivatives; the layout of second derivatives
  is not.
* Inputs have a mean/std ratio up to 1e4 (float16/bfloat16: 30, beyond which the input's
  rounding erases its spread and neither torch nor bnlib has a meaningful answer).
* float32/float16/bfloat16 (module or input): the truth is the same computation in float64
  (torch.nn in float64 on the same, exactly representable, inputs and parameters, as
  contiguous copies, so torch's layout bug below cannot corrupt the truth). A case
  passes if ``err(bnlib) <= 4 * err(torch) + floor`` with ``floor = 8 * eps(dtype)`` of the
  tensor's dtype (float32 1e-6, float16 7.8e-3, bfloat16 6.3e-2): bnlib must be at least about
  as accurate as torch, and never worse than a few rounding errors of the result dtype.
* NaN/inf must appear where torch's do; integers (``num_batches_tracked``) must be equal.

torch 2.13's own bugs: on the CPU, BatchNorm with an input whose size-1 dimensions make its
strides look channels_last (e.g. ``torch.as_strided(t, (1, 2, 1, 3), (1, 1, 2, 2))``) and a
contiguous upstream gradient gets wrong gradients (``bias.grad`` is not ``dy.sum``). Every
case with a non-contiguous input or gradient therefore also runs torch on contiguous copies;
where torch's strided result is wrong (off by more than 10% of the tensor's scale, float64:
1e-6, and 10x worse than the contiguous copy) the case is counted as a torch bug (``torch
bugs`` in the summary, with the tensors named) and bnlib is compared with the contiguous
result. Also known (torch's bugs, the reference is then the call with ``weight=ones``):
``F.group_norm(x, G, weight=None, bias=b)`` raises "tensor does not have a device";
``F.layer_norm`` of float16/bfloat16 input with a float32 bias and no weight raises "expected
scalar type BFloat16 but found Float" in backward.

Run one case with its details::

    python -m tests.fuzz --case 1234

Run the full 10,000 (about 3 minutes of one CPU core) and print a summary::

    OMP_NUM_THREADS=1 python -m tests.fuzz --cases 0:10000

CI runs cases 0-1999 (tests/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import copy
import io
import math
import pickle
import random
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

import bnlib.numpy as bnp
import bnlib.torch as bt

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
FAMILIES = (ValueError, RuntimeError, NotImplementedError, IndexError, TypeError)
F64_TOL = 1e-9
GG_TOL = 1e-7  # second derivatives: terms in 1/std^3, summed in different orders
RATIO = 4.0
FLOOR_ULPS = 8.0

MODULE_RANKS = {  # class -> input ranks it accepts
    "BatchNorm1d": (2, 3),
    "BatchNorm2d": (4,),
    "BatchNorm3d": (5,),
    "InstanceNorm1d": (2, 3),
    "InstanceNorm2d": (3, 4),
    "InstanceNorm3d": (4, 5),
    "GroupNorm": (2, 3, 4, 5),
    "LayerNorm": (1, 2, 3, 4),
    "RMSNorm": (1, 2, 3, 4),
}


@dataclass
class Outcome:
    """What one implementation produced in one step: a tensor dict or an exception."""

    tensors: dict = field(default_factory=dict)
    error: BaseException | None = None


class Divergence(Exception):
    pass


# --- comparison helpers --------------------------------------------------------------------


def _key_strides(t: torch.Tensor):
    return tuple(s for s, n in zip(t.stride(), t.shape) if n > 1)


def _rel_err(a: torch.Tensor, truth: torch.Tensor, min_scale: float = 0.0) -> float:
    a, truth = a.detach().double(), truth.detach().double()
    finite = torch.isfinite(truth)
    if not finite.any():
        return 0.0
    scale = max(truth[finite].abs().max().item(), min_scale)
    diff = (a - truth)[finite].abs().max().item()
    return diff / scale if scale > 0 else diff


def _floor(dtype: torch.dtype) -> float:
    return FLOOR_ULPS * torch.finfo(dtype).eps


def _check_same_meta(name, a, b, problems, strides=True):
    if a.shape != b.shape:
        problems.append(f"{name}: shape {tuple(a.shape)} vs torch {tuple(b.shape)}")
        return False
    if a.dtype != b.dtype:
        problems.append(f"{name}: dtype {a.dtype} vs torch {b.dtype}")
        return False
    if strides and a.numel() > 0 and _key_strides(a) != _key_strides(b):
        problems.append(f"{name}: strides {a.stride()} vs torch {b.stride()}")
    return True


def _nan_mask_ok(name, a, b, problems):
    na, nb = ~torch.isfinite(a.detach().double()), ~torch.isfinite(b.detach().double())
    if not torch.equal(na, nb):
        problems.append(
            f"{name}: non-finite values where torch has {int(nb.sum())} (bnlib {int(na.sum())})"
        )
        return False
    return True


def compare(name, ours, ref, truth, problems, strides=True, noise=None, min_scale=0.0):
    """ours/ref/truth: tensors (truth float64 or None when ref is float64); noise: torch's
    float32 result on the same problem (float64 cases), which widens the float64 tolerance
    where the problem is ill-conditioned."""
    if not _check_same_meta(name, ours, ref, problems, strides):
        return
    if ours.numel() == 0:
        return
    if not ours.dtype.is_floating_point:
        if not torch.equal(ours, ref):
            problems.append(f"{name}: {ours.tolist()} vs torch {ref.tolist()}")
        return
    if not _nan_mask_ok(name, ours, ref, problems):
        return
    if truth is None or ref.dtype == F64:
        e = _rel_err(ours, ref, min_scale)
        tol = GG_TOL if " gg_" in name else F64_TOL
        if noise is not None and noise.shape == ref.shape:
            tol = max(tol, noise_tol(noise, ref))
        if e > tol:
            problems.append(f"{name}: relative error {e:.3g} vs torch (float64 tol {tol:g})")
        return
    eo, er = _rel_err(ours, truth, min_scale), _rel_err(ref, truth, min_scale)
    if eo > RATIO * er + _floor(ours.dtype):
        problems.append(
            f"{name}: error vs float64 truth {eo:.3g}, torch's {er:.3g} "
            f"(allowed {RATIO} * torch + {_floor(ours.dtype):.2g})"
        )


def families(e: BaseException) -> tuple:
    return tuple(f for f in FAMILIES if isinstance(e, f))


def compare_errors(step, eo, er, problems) -> bool:
    """True when both raised (and the case stops there)."""
    if er is None and eo is None:
        return False
    if er is None:
        problems.append(f"{step}: bnlib raised {type(eo).__name__}: {eo} where torch did not")
        return True
    if eo is None:
        problems.append(f"{step}: torch raised {type(er).__name__}: {er}; bnlib did not")
        return True
    missing = [f.__name__ for f in families(er) if not isinstance(eo, f)]
    if missing:
        problems.append(
            f"{step}: torch raised {type(er).__name__} ({er}); bnlib's "
            f"{type(eo).__name__} ({eo}) is not a {', '.join(missing)}"
        )
    return True


# --- random inputs -------------------------------------------------------------------------


def rand_shape(rng: random.Random, rank: int) -> list[int]:
    return [rng.choice((1, 2, 2, 3, 4)) for _ in range(rank)]


def make_input(rng: random.Random, g: torch.Generator, shape, dtype, layout):
    """Random values (shifted and scaled at random) in ``dtype``, laid out as ``layout``."""
    scale = 10.0 ** rng.uniform(-2, 2)
    ratio = rng.choice((0.0, 0.0, rng.uniform(-3, 3), 10.0 ** rng.uniform(1, 4)))
    if dtype in (F16, BF16):
        ratio = min(ratio, 30.0)  # a larger mean/std ratio rounds the spread away
    shift = ratio * scale  # mean/std ratio up to 1e4
    base = (torch.randn(shape, generator=g, dtype=F64) * scale + shift).to(dtype)
    return relayout(rng, base, layout)


def relayout(rng: random.Random, t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` with other strides."""
    if layout == "channels_last" and t.dim() in (4, 5):
        fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        return t.contiguous(memory_format=fmt)
    if layout == "permuted" and t.dim() >= 2:
        perm = list(range(t.dim()))
        rng.shuffle(perm)
        inv = [perm.index(i) for i in range(t.dim())]
        return t.permute(perm).contiguous().permute(inv)
    if layout == "sliced" and t.dim() >= 1:
        big = torch.zeros(list(t.shape[:-1]) + [t.shape[-1] * 2], dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    if layout == "size1_strides" and 1 in t.shape and t.dim() >= 2:
        # as_strided with arbitrary strides for the size-1 dims and a random dense order
        # of the others (torch.as_strided(t, (1, 2, 1, 3), (1, 1, 2, 2)) is one of these)
        dims = [d for d in range(t.dim()) if t.shape[d] > 1]
        rng.shuffle(dims)
        strides, step = [0] * t.dim(), 1
        for d in reversed(dims):
            strides[d] = step
            step *= t.shape[d]
        for d in range(t.dim()):
            if t.shape[d] == 1:
                strides[d] = rng.choice((1, 2, step, 0))
        out = torch.empty_strided(t.shape, strides, dtype=t.dtype)
        out.copy_(t)
        return out
    if layout == "expanded" and 1 in t.shape:
        d = t.shape.index(1)
        shape = list(t.shape)
        shape[d] = 2
        return t.expand(shape)
    return t.contiguous()


LAYOUTS = (
    "contiguous",
    "contiguous",
    "channels_last",
    "permuted",
    "sliced",
    "size1_strides",
    "expanded",
)


# --- module cases --------------------------------------------------------------------------


def module_config(rng: random.Random) -> dict:
    name = rng.choice(list(MODULE_RANKS))
    rank = rng.choice(MODULE_RANKS[name])
    shape = rand_shape(rng, rank)
    kwargs, args = {}, []
    if name.startswith(("BatchNorm", "InstanceNorm")):
        feat = 0 if (name.startswith("Instance") and rank == MODULE_RANKS[name][0]) else 1
        args = [shape[feat]]
        kwargs["eps"] = rng.choice((1e-5, 1e-3, 0.1, 1e-8))
        kwargs["momentum"] = rng.choice((0.1, None, 0.0, 1.0, round(rng.random(), 3)))
        default_affine = name.startswith("BatchNorm")
        kwargs["affine"] = rng.choice((default_affine, default_affine, not default_affine))
        kwargs["track_running_stats"] = rng.choice((default_affine, True, False))
        if kwargs["affine"] and rng.random() < 0.2:
            kwargs["bias"] = False
    elif name == "GroupNorm":
        c = shape[1]
        divisors = [d for d in range(1, c + 1) if c % d == 0]
        args = [rng.choice(divisors), c]
        kwargs["eps"] = rng.choice((1e-5, 1e-3, 1e-8))
        kwargs["affine"] = rng.random() < 0.8
        if kwargs["affine"] and rng.random() < 0.2:
            kwargs["bias"] = False
    else:
        k = rng.randint(1, rank)
        args = [tuple(shape[rank - k :]) if rng.random() < 0.7 or k > 1 else shape[-1]]
        if name == "LayerNorm":
            kwargs["eps"] = rng.choice((1e-5, 1e-3, 1e-8))
            kwargs["elementwise_affine"] = rng.random() < 0.8
            if kwargs["elementwise_affine"] and rng.random() < 0.2:
                kwargs["bias"] = False
        else:
            kwargs["eps"] = rng.choice((None, None, 1e-6, 1e-3))
            kwargs["elementwise_affine"] = rng.random() < 0.8
    mod_dtype = rng.choice((F64, F64, F32, F32, F16, BF16))
    r = rng.random()
    if r < 0.7:
        in_dtype = mod_dtype
    elif r < 0.9:
        mod_dtype, in_dtype = F32, rng.choice((F16, BF16))
    else:
        in_dtype = rng.choice((F64, F32, F16, BF16))
    steps = [rng.random() < 0.6 for _ in range(rng.randint(1, 3))]
    return dict(
        name=name,
        args=args,
        kwargs=kwargs,
        shape=shape,
        mod_dtype=mod_dtype,
        in_dtype=in_dtype,
        layout=rng.choice(LAYOUTS),
        dy_layout=rng.choice(("contiguous", "same")),
        steps=steps,
        state_dict=rng.random() < 0.3,
        old_state_dict=rng.random() < 0.15,
        copies=rng.random() < 0.15,
        double_backward=rng.random() < 0.3,
    )


def build(lib, cfg, seed):
    m = getattr(lib, cfg["name"])(*cfg["args"], **cfg["kwargs"], dtype=cfg["mod_dtype"])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64).to(p.dtype))
    return m


def _run_step(m, x, dy, double_backward):
    """Forward, first (and optionally second) derivatives; returns an Outcome."""
    out = Outcome()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xx = x.detach().requires_grad_(x.dtype.is_floating_point)
            y = m(xx)
            out.tensors["out"] = y.detach()
            params = [p for p in m.parameters()]
            wrt = [xx] + params
            if y.requires_grad and y.numel() > 0:
                grads = torch.autograd.grad(
                    y,
                    wrt,
                    dy.to(y.dtype) if dy.dtype != y.dtype else dy,
                    create_graph=double_backward,
                    allow_unused=True,
                )
                for n, gr in zip(
                    ["grad_input"] + [f"grad_{n}" for n, _ in m.named_parameters()], grads
                ):
                    if gr is not None:
                        out.tensors[n] = gr.detach()
                if double_backward and grads[0] is not None:
                    v = torch.ones_like(grads[0]) * 0.5 + xx.detach().sin()
                    # a grad_input that does not depend on anything has zero derivatives
                    gg = (
                        torch.autograd.grad((grads[0] * v).sum(), wrt, allow_unused=True)
                        if grads[0].requires_grad
                        else [None] * len(wrt)
                    )
                    for n, gr in zip(
                        ["gg_input"] + [f"gg_{n}" for n, _ in m.named_parameters()], gg
                    ):
                        out.tensors[n] = (
                            torch.zeros_like(
                                wrt[0] if n == "gg_input" else dict(m.named_parameters())[n[3:]]
                            )
                            if gr is None
                            else gr.detach()
                        )
            for n, b in m.named_buffers():
                out.tensors[f"buffer_{n}"] = b.detach().clone()
    except Exception as e:  # noqa: BLE001 - compared with torch's
        out.error = e
    return out


def _truth_module(ref, cfg):
    return copy.deepcopy(ref).double()


def natural_scales(dy: torch.Tensor, weight, eps) -> dict:
    """The size of the terms that cancel in each gradient (float64 cases): a gradient that
    is zero by cancellation (one value per group: x_hat = 0) is compared at this scale, not
    relative to its own rounding noise. ``grad_input ~ |dy| |w| / sqrt(eps)``, parameter
    gradients ``~ sum |dy|``."""
    d = dy.detach().double().abs()
    if d.numel() == 0:
        return {}
    w = (
        1.0
        if weight is None or weight.numel() == 0
        else max(1.0, weight.detach().double().abs().max().item())
    )
    inv = 1.0 / math.sqrt(max(eps if eps is not None else 1e-7, 1e-12))
    g_in = d.max().item() * w * inv
    g_p = d.sum().item()
    return {
        "grad_input": g_in,
        "gg_input": g_in * inv,
        "grad_weight": g_p,
        "grad_bias": g_p,
        "grad_w": g_p,
        "grad_b": g_p,
        "gg_weight": g_in,
        "gg_bias": 0.0,
    }


def _compare_outcomes(step, oo, ro, to, problems, strides=True, no=None, scales=None):
    """Compare bnlib's outcome ``oo`` with torch's ``ro``; ``to``: the float64 truth (for
    non-float64 cases), ``no``: torch in float32 (for float64 cases, the noise level)."""
    if compare_errors(step, oo.error, ro.error, problems):
        return True
    keys_o, keys_r = set(oo.tensors), set(ro.tensors)
    if keys_o != keys_r:
        problems.append(f"{step}: bnlib produced {sorted(keys_o)}, torch {sorted(keys_r)}")
    for k in sorted(keys_o & keys_r):
        truth = None if to is None or to.error is not None else to.tensors.get(k)
        noise = None if no is None or no.error is not None else no.tensors.get(k)
        compare(
            f"{step} {k}",
            oo.tensors[k],
            ro.tensors[k],
            truth,
            problems,
            strides=strides and not k.startswith(("buffer", "gg_")),
            noise=noise,
            min_scale=(scales or {}).get(k, 0.0),
        )
    return False


def _torch_bug(ro, rc, to) -> list[str]:
    """Names of tensors where torch on strided inputs is wrong while torch on contiguous
    copies is right: off by more than 10% of the tensor's scale (float64: 1e-6) and more
    than 10x the contiguous copy's error vs the float64 truth. (A merely less accurate
    strided kernel is not a bug; bnlib is then compared with that less accurate result.)"""
    bad = []
    if ro.error is not None or rc.error is not None:
        return bad
    for k, a in ro.tensors.items():
        b = rc.tensors.get(k)
        if b is None or not a.dtype.is_floating_point or a.numel() == 0:
            continue
        truth = None if to is None or to.error is not None else to.tensors.get(k)
        if truth is None:  # float64: torch is its own truth; strided vs contiguous
            if _rel_err(a, b) > 1e-6:
                bad.append(k)
        else:
            ea, eb = _rel_err(a, truth), _rel_err(b, truth)
            if ea > 0.1 and ea > 10 * eb:
                bad.append(k)
    return bad


def run_module_case(rng, g, cfg, seed, problems, bugs):
    ours_ok = True
    try:
        ours = build(bt, cfg, seed)
    except Exception as e:  # noqa: BLE001
        ours, ours_ok, oerr = None, False, e
    try:
        ref = build(nn, cfg, seed)
    except Exception as e:  # noqa: BLE001
        compare_errors("construct", None if ours_ok else oerr, e, problems)
        return
    if not ours_ok:
        compare_errors("construct", oerr, None, problems)
        return
    ours.load_state_dict(ref.state_dict())
    # the float64 truth where the output is not float64; else torch in float32 (noise level)
    truth = _truth_module(ref, cfg) if cfg["in_dtype"] != F64 else None
    ref_c = copy.deepcopy(ref)  # torch on contiguous copies, for torch's layout bugs
    ref32 = copy.deepcopy(ref).float() if truth is None else None
    for i, training in enumerate(cfg["steps"]):
        for m in (ours, ref, ref_c, truth, ref32):
            if m is not None:
                m.train(training)
        x = make_input(rng, g, cfg["shape"], cfg["in_dtype"], cfg["layout"])
        dy = torch.randn(cfg["shape"], generator=g, dtype=F64).to(
            cfg["in_dtype"] if cfg["in_dtype"].is_floating_point else F32
        )
        if cfg["dy_layout"] == "same" and x.dim() > 0:
            dy = relayout(rng, dy, cfg["layout"]) if cfg["layout"] != "expanded" else dy
        db = cfg["double_backward"] and cfg["in_dtype"] == F64 and cfg["mod_dtype"] == F64
        oo = _run_step(ours, x, dy, db)
        ro = _run_step(ref, x, dy, db)
        # the truth and torch float32 run on contiguous copies: torch's layout bug (below) would
        # make a float64 truth on the strided input wrong too
        to = (
            _run_step(truth, x.double().contiguous(), dy.double().contiguous(), False)
            if truth is not None
            else None
        )
        no = (
            _run_step(ref32, x.float().contiguous(), dy.float().contiguous(), False)
            if ref32 is not None
            else None
        )
        step = f"step {i} ({'train' if training else 'eval'})"
        if not (x.is_contiguous() and dy.is_contiguous()):
            rc = _run_step(ref_c, x.contiguous(), dy.contiguous(), db)
            bad = _torch_bug(ro, rc, to)
            if bad:
                bugs.append(
                    f"{step}: torch on strided input wrong in {bad}; its contiguous copy is right"
                )
                for k in bad:
                    ro.tensors[k] = _restride(rc.tensors[k], ro.tensors[k])
        else:
            _run_step(ref_c, x, dy, db)
        scales = natural_scales(dy, getattr(ref, "weight", None), cfg["kwargs"].get("eps"))
        if _compare_outcomes(step, oo, ro, to, problems, no=no, scales=scales):
            return
    x = make_input(rng, g, cfg["shape"], cfg["in_dtype"], "contiguous")
    if cfg["state_dict"]:
        sd_o, sd_r = ours.state_dict(), ref.state_dict()
        if list(sd_o) != list(sd_r):
            problems.append(f"state_dict keys {list(sd_o)} vs torch {list(sd_r)}")
            return
        fresh_o, fresh_r = build(bt, cfg, seed + 1), build(nn, cfg, seed + 1)
        for step, m, sd in (
            ("state_dict torch->bnlib", fresh_o, sd_r),
            ("state_dict bnlib->torch", fresh_r, sd_o),
        ):
            try:
                m.load_state_dict(sd)
            except Exception as e:  # noqa: BLE001
                problems.append(f"{step}: {type(e).__name__}: {e}")
                continue
            for k, v in m.state_dict().items():  # what was loaded is what was saved
                if v.dtype != sd[k].dtype or not torch.equal(
                    torch.nan_to_num(v), torch.nan_to_num(sd[k])
                ):
                    problems.append(f"{step}: {k} {v} after loading {sd[k]}")
    if cfg["old_state_dict"] and "num_batches_tracked" in ref.state_dict():
        sd = ref.state_dict()
        del sd["num_batches_tracked"]
        sd._metadata[""]["version"] = 1
        for m in (ours, ref):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m.load_state_dict(copy.deepcopy(sd), strict=False)
        if int(ours.num_batches_tracked) != int(ref.num_batches_tracked):
            problems.append(
                f"old state_dict: num_batches_tracked {int(ours.num_batches_tracked)}"
                f" vs torch {int(ref.num_batches_tracked)}"
            )
    if cfg["copies"]:
        ours.eval()
        base = _forward_only(ours, x)
        for how, clone in (
            ("deepcopy", lambda: copy.deepcopy(ours)),
            ("pickle", lambda: pickle.loads(pickle.dumps(ours))),
            ("torch.save", lambda: _save_load(ours)),
        ):
            c = _forward_only(clone(), x)
            if compare_errors(how, c.error, base.error, problems):
                continue
            for k, v in base.tensors.items():  # a copy computes exactly what the original does
                if not torch.equal(torch.nan_to_num(c.tensors[k]), torch.nan_to_num(v)):
                    problems.append(f"{how}: {k} differs from the original module's")


def _forward_only(m, x):
    o = Outcome()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            o.tensors["out"] = m(x)
        for n, b in m.named_buffers():
            o.tensors[f"buffer_{n}"] = b.detach().clone()
    except Exception as e:  # noqa: BLE001
        o.error = e
    return o


def _compare_loaded(step, oo, ro, problems):
    """A module loaded from the other's state_dict: the same eval outputs and buffers, to
    the rounding of the dtype (the two compute the same function in different orders)."""
    if compare_errors(step, oo.error, ro.error, problems):
        return
    for k, b in ro.tensors.items():
        a = oo.tensors[k]
        if not _check_same_meta(f"{step} {k}", a, b, problems, strides=False) or a.numel() == 0:
            continue
        if not a.dtype.is_floating_point:
            if not torch.equal(a, b):
                problems.append(f"{step} {k}: {a.tolist()} vs torch {b.tolist()}")
        elif _nan_mask_ok(f"{step} {k}", a, b, problems):
            tol = F64_TOL if a.dtype == F64 else _floor(a.dtype)
            if _rel_err(a, b) > tol:
                problems.append(f"{step} {k}: relative error {_rel_err(a, b):.3g} (tol {tol:g})")


def _restride(src, like):
    out = torch.empty_strided(like.shape, like.stride(), dtype=like.dtype)
    out.copy_(src)
    return out


def _save_load(m):
    f = io.BytesIO()
    torch.save(m, f)
    f.seek(0)
    return torch.load(f, weights_only=False)


# --- bad inputs ----------------------------------------------------------------------------


def bad_config(rng: random.Random) -> dict:
    cfg = module_config(rng)
    cfg["steps"] = [rng.random() < 0.7]
    cfg["state_dict"] = cfg["old_state_dict"] = cfg["copies"] = False
    name, shape = cfg["name"], cfg["shape"]
    what = rng.choice(
        ("rank", "channels", "int", "bool", "mixed", "eps", "one_value", "norm_shape", "groups")
    )
    cfg["bad"] = what
    if what == "rank":
        cfg["shape"] = shape[:-1] if len(shape) > 1 and rng.random() < 0.5 else shape + [2]
    elif what == "channels" and len(shape) >= 2:
        cfg["shape"] = [shape[0], shape[1] + rng.choice((1, 2))] + shape[2:]
    elif what in ("int", "bool"):
        cfg["in_dtype"] = torch.int64 if what == "int" else torch.bool
    elif what == "mixed":
        cfg["mod_dtype"], cfg["in_dtype"] = rng.choice(
            [(F32, F64), (F64, F32), (F16, F32), (BF16, F32), (F16, BF16), (F32, F16), (F64, BF16)]
        )
    elif what == "eps" and "eps" in cfg["kwargs"]:
        cfg["kwargs"]["eps"] = rng.choice((0.0, -1.0, -1e-5))
    elif what == "one_value":
        cfg["shape"] = [1] * len(shape)
        if name == "GroupNorm":
            cfg["args"] = [1, 1]
        elif name.startswith(("BatchNorm", "Instance")):
            cfg["args"] = [1]
        cfg["steps"] = [True]
    elif what == "norm_shape" and name in ("LayerNorm", "RMSNorm"):
        ns = cfg["args"][0]
        ns = (ns,) if isinstance(ns, int) else tuple(ns)
        cfg["args"] = [ns[:-1] + (ns[-1] + 1,)]
    elif what == "groups" and name == "GroupNorm":
        cfg["args"] = [cfg["args"][1] + 1, cfg["args"][1]]
    return cfg


# --- functional cases ----------------------------------------------------------------------


def _fn_call(lib_f, kind, x, p, opts):
    if kind == "batch_norm":
        return lib_f.batch_norm(
            x,
            p.get("rm"),
            p.get("rv"),
            p.get("w"),
            p.get("b"),
            opts["training"],
            opts["momentum"],
            opts["eps"],
        )
    if kind == "instance_norm":
        return lib_f.instance_norm(
            x,
            p.get("rm"),
            p.get("rv"),
            p.get("w"),
            p.get("b"),
            opts["training"],
            opts["momentum"],
            opts["eps"],
        )
    if kind == "group_norm":
        return lib_f.group_norm(x, opts["groups"], p.get("w"), p.get("b"), opts["eps"])
    if kind == "layer_norm":
        return lib_f.layer_norm(x, opts["ns"], p.get("w"), p.get("b"), opts["eps"])
    return lib_f.rms_norm(x, opts["ns"], p.get("w"), opts["eps"])


def functional_config(rng: random.Random, bad: bool) -> dict:
    kind = rng.choice(
        ("batch_norm", "batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm")
    )
    rank = rng.randint(
        3 if kind == "instance_norm" else (1 if kind in ("layer_norm", "rms_norm") else 2), 5
    )
    shape = rand_shape(rng, rank)
    opts = {
        "training": rng.random() < 0.6,
        "momentum": rng.choice((0.1, 0.0, 1.0, 0.37)),
        "eps": rng.choice((1e-5, 1e-3, 0.0 if rng.random() < 0.1 else 1e-8)),
    }
    pshape = None
    params = {}
    if kind in ("batch_norm", "instance_norm"):
        pshape = [shape[1]]
        which = rng.choice(("both", "both", "none", "mean", "var"))
        if which in ("both", "mean"):
            params["rm"] = pshape
        if which in ("both", "var"):
            params["rv"] = pshape
    elif kind == "group_norm":
        c = shape[1]
        opts["groups"] = rng.choice([d for d in range(1, c + 1) if c % d == 0])
        pshape = [c]
    else:
        k = rng.randint(1, rank)
        opts["ns"] = shape[rank - k :]
        pshape = opts["ns"]
        if kind == "rms_norm" and rng.random() < 0.4:
            opts["eps"] = None
    if rng.random() < 0.7:
        params["w"] = pshape
    if kind != "rms_norm" and rng.random() < 0.7:
        params["b"] = pshape
    dtype = rng.choice((F64, F64, F32, F16, BF16))
    pdtype = dtype if rng.random() < 0.7 else (F32 if dtype in (F16, BF16) else dtype)
    if bad:
        what = rng.choice(("param_size", "rank", "dtype", "eps"))
        if what == "param_size" and params:
            k = rng.choice(sorted(params))
            params[k] = [params[k][0] + 1] + params[k][1:]
        elif what == "rank":
            shape = shape[:1]
        elif what == "dtype":
            pdtype = rng.choice([d for d in (F64, F32, F16, BF16) if d != dtype])
        else:
            opts["eps"] = -1e-3
    return dict(
        kind=kind,
        shape=shape,
        opts=opts,
        params=params,
        dtype=dtype,
        pdtype=pdtype,
        layout=rng.choice(LAYOUTS),
    )


def _known_torch_bug(cfg, raw, ro) -> str | None:
    """torch 2.13 bugs with a bias but no weight: ``group_norm`` raises "tensor does not have
    a device"; ``layer_norm``'s backward with float16/bfloat16 input and a float32 bias
    raises "expected scalar type BFloat16 but found Float"."""
    if ro.error is None or "w" in raw or "b" not in raw:
        return None
    if cfg["kind"] == "group_norm" and "does not have a device" in str(ro.error):
        return "torch.group_norm(x, G, None, bias) raises 'tensor does not have a device'"
    if (
        cfg["kind"] == "layer_norm"
        and "expected scalar type" in str(ro.error)
        and cfg["dtype"] in (F16, BF16)
        and cfg["pdtype"] == F32
    ):
        return (
            "torch.layer_norm(x_half, shape, None, bias_float32) backward raises "
            "'expected scalar type ... but found Float'"
        )
    return None


def run_functional_case(rng, g, cfg, problems, bugs):
    x = make_input(rng, g, cfg["shape"], cfg["dtype"], cfg["layout"])
    dy = torch.randn(cfg["shape"], generator=g, dtype=F64).to(cfg["dtype"])
    raw = {}
    for k, s in cfg["params"].items():
        v = torch.randn(s, generator=g, dtype=F64)
        raw[k] = (v.abs() + 0.5) if k == "rv" else v
    results = {}
    variants = {"ours": (bt, x, dy, cfg["pdtype"]), "torch": (nn.functional, x, dy, cfg["pdtype"])}
    if cfg["dtype"] != F64:
        variants["truth"] = (nn.functional, x.double().contiguous(), dy.double(), F64)
    elif cfg["pdtype"] == F64:
        variants["f32"] = (nn.functional, x.float().contiguous(), dy.float(), F32)
    if not x.is_contiguous():
        variants["torch_c"] = (nn.functional, x.contiguous(), dy, cfg["pdtype"])
    for who, (lib, xin, dyin, pdt) in variants.items():
        o = Outcome()
        p = {k: v.to(pdt).requires_grad_(k in ("w", "b")) for k, v in raw.items()}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                xx = xin.detach().requires_grad_(True)
                y = _fn_call(lib, cfg["kind"], xx, p, cfg["opts"])
                o.tensors["out"] = y.detach()
                wrt = [xx] + [p[k] for k in ("w", "b") if k in p]
                names = ["grad_input"] + [f"grad_{k}" for k in ("w", "b") if k in p]
                if y.requires_grad and y.numel() > 0:
                    for n, gr in zip(
                        names, torch.autograd.grad(y, wrt, dyin.to(y.dtype), allow_unused=True)
                    ):
                        if gr is not None:
                            o.tensors[n] = gr
                for k in ("rm", "rv"):
                    if k in p:
                        o.tensors[f"buffer_{k}"] = p[k].detach()
        except Exception as e:  # noqa: BLE001
            o.error = e
        results[who] = o
    ro = results["torch"]
    bug = _known_torch_bug(cfg, raw, ro)
    if bug:
        # the reference is the same call with weight = ones (and no weight gradient)
        bugs.append(bug)
        for who in [w for w in results if w != "ours"]:
            lib, xin, dyin, pdt = variants[who]
            xx = xin.detach().requires_grad_(True)
            b = raw["b"].to(pdt).requires_grad_(True)
            fn = lib.group_norm if cfg["kind"] == "group_norm" else lib.layer_norm
            arg = cfg["opts"]["groups"] if cfg["kind"] == "group_norm" else cfg["opts"]["ns"]
            y = fn(xx, arg, torch.ones_like(b), b, cfg["opts"]["eps"])
            gx, gb = torch.autograd.grad(y, [xx, b], dyin.to(y.dtype))
            results[who] = Outcome({"out": y.detach(), "grad_input": gx, "grad_b": gb})
        ro = results["torch"]
    if "torch_c" in results:
        bad = _torch_bug(ro, results["torch_c"], results.get("truth"))
        if bad:
            bugs.append(f"torch.{cfg['kind']} on strided input wrong in {bad}")
            for k in bad:
                ro.tensors[k] = _restride(results["torch_c"].tensors[k], ro.tensors[k])
    _compare_outcomes(
        cfg["kind"],
        results["ours"],
        ro,
        results.get("truth"),
        problems,
        no=results.get("f32"),
        scales=natural_scales(dy, raw.get("w"), cfg["opts"]["eps"]),
    )


# --- NumPy cases ---------------------------------------------------------------------------


def numpy_config(rng: random.Random) -> dict:
    kind = rng.choice(("layer", "layer", "functions", "float32", "norms"))
    rank = rng.randint(2, 4)
    return dict(
        kind=kind,
        shape=rand_shape(rng, rank),
        momentum=rng.choice((0.1, None, 0.0, 1.0, 0.3)),
        affine=rng.random() < 0.8,
        track=rng.random() < 0.8,
        eps=rng.choice((1e-5, 1e-3)),
        steps=[rng.random() < 0.6 for _ in range(rng.randint(1, 3))],
        shift=rng.choice((0.0, 3.0, 1e3, 1e4)),
        groups_seed=rng.random(),
    )


EPS_RATIO = torch.finfo(F64).eps / torch.finfo(F32).eps


def noise_tol(ref32, ref64) -> float:
    """The float64 tolerance for one tensor: 1e-9, or more where the problem is
    ill-conditioned, measured by torch's own float32 error on it scaled to float64's eps."""
    a = torch.as_tensor(np.asarray(ref32) if not torch.is_tensor(ref32) else ref32).double()
    b = torch.as_tensor(np.asarray(ref64) if not torch.is_tensor(ref64) else ref64).double()
    if a.shape != b.shape or a.numel() == 0:
        return F64_TOL
    return max(F64_TOL, RATIO * _rel_err(a, b) * EPS_RATIO)


def _torch_f32(fn, *arrays):
    """``fn`` (which builds float64 tensors from NumPy arrays) rerun on float32 copies."""
    return fn(*(np.asarray(a, dtype=np.float32) for a in arrays))


def _torch_grads(fn, x, w, b, dy) -> dict:
    """torch's output and gradients of ``fn(x, w, b)`` for NumPy inputs, as NumPy arrays."""
    t = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    y = fn(*t)
    y.backward(torch.from_numpy(np.asarray(dy)))
    return {
        "out": y.detach().numpy(),
        "grad_input": t[0].grad.numpy(),
        "grad_weight": t[1].grad.numpy(),
        "grad_bias": t[2].grad.numpy(),
    }


def _np_close(name, a, b, problems, tol=F64_TOL, min_scale=0.0):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        problems.append(f"{name}: shape {a.shape} vs torch {b.shape}")
        return
    if a.size == 0:
        return
    scale = max(np.abs(b).max(), min_scale, 1e-300)
    e = np.abs(a - b).max() / scale
    if not e <= tol:
        problems.append(f"{name}: relative error {e:.3g} vs torch (tol {tol:g})")


def run_numpy_case(rng, g, cfg, problems, bugs):
    shape = cfg["shape"]
    if shape[0] * math.prod(shape[2:]) == 1:
        shape = [2] + shape[1:]
    c = shape[1]
    nrng = np.random.default_rng(rng.randrange(2**32))
    if cfg["kind"] == "layer":
        layer = bnp.BatchNorm(
            c,
            eps=cfg["eps"],
            momentum=cfg["momentum"],
            affine=cfg["affine"],
            track_running_stats=cfg["track"],
        )
        cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)]
        ref = cls(
            c,
            eps=cfg["eps"],
            momentum=cfg["momentum"],
            affine=cfg["affine"],
            track_running_stats=cfg["track"],
            dtype=F64,
        )
        if cfg["affine"]:
            layer.weight, layer.bias = nrng.normal(size=c), nrng.normal(size=c)
            with torch.no_grad():
                ref.weight.copy_(torch.from_numpy(layer.weight))
                ref.bias.copy_(torch.from_numpy(layer.bias))
        ref32 = copy.deepcopy(ref).float()
        for i, training in enumerate(cfg["steps"]):
            layer.train(training)
            ref.train(training)
            ref32.train(training)
            x = nrng.normal(cfg["shift"], 2.0, size=shape)
            dy = nrng.normal(size=shape)
            r = {}
            for tag, mod, dt in (("64", ref, np.float64), ("32", ref32, np.float32)):
                xt = torch.tensor(x.astype(dt), requires_grad=True)
                yt = mod(xt)
                yt.backward(torch.from_numpy(dy.astype(dt)))
                r[tag] = {"out": yt.detach().numpy(), "grad_input": xt.grad.numpy()}
                for n, q in mod.named_parameters():
                    r[tag][f"grad_{n}"] = q.grad.numpy().copy()
                    q.grad = None
                for n, q in mod.named_buffers():
                    r[tag][n] = q.numpy().copy()
            tol = {k: noise_tol(r["32"][k], v) for k, v in r["64"].items()}
            y = layer(x)
            _np_close(f"step {i} out", y, r["64"]["out"], problems, tol["out"])
            if training or not cfg["track"]:
                dx = layer.backward(dy)
                _np_close(
                    f"step {i} grad_input", dx, r["64"]["grad_input"], problems, tol["grad_input"]
                )
                if cfg["affine"]:
                    for n, v in (("weight", layer.grad_weight), ("bias", layer.grad_bias)):
                        _np_close(
                            f"step {i} grad_{n}",
                            v,
                            r["64"][f"grad_{n}"],
                            problems,
                            tol[f"grad_{n}"],
                        )
            if cfg["track"]:
                for n in ("running_mean", "running_var"):
                    _np_close(f"step {i} {n}", getattr(layer, n), r["64"][n], problems, tol[n])
                if layer.num_batches_tracked != int(ref.num_batches_tracked):
                    problems.append(
                        f"step {i} num_batches_tracked {layer.num_batches_tracked}"
                        f" vs torch {int(ref.num_batches_tracked)}"
                    )
        return
    if cfg["kind"] == "norms":
        x = nrng.normal(cfg["shift"], 2.0, size=shape)
        dy = nrng.normal(size=shape)
        if cfg["groups_seed"] < 0.5:
            k = 1 + int(cfg["groups_seed"] * 2 * (len(shape) - 1)) % (len(shape) - 1)
            gamma, beta = nrng.normal(size=shape[-k:]), nrng.normal(size=shape[-k:])
            y, cache = bnp.layer_norm_forward(x, gamma, beta, normalized_ndim=k)
            dx, dg, dbeta = bnp.layer_norm_backward(dy, cache)
            fn = lambda t, w, b: nn.functional.layer_norm(t, shape[-k:], w, b, 1e-5)  # noqa: E731
        else:
            divisors = [d for d in range(1, c + 1) if c % d == 0]
            G = divisors[int(cfg["groups_seed"] * 1e6) % len(divisors)]
            if shape[0] * (c // G) * math.prod(shape[2:]) == 1:
                return
            gamma, beta = nrng.normal(size=c), nrng.normal(size=c)
            y, cache = bnp.group_norm_forward(x, G, gamma, beta)
            dx, dg, dbeta = bnp.group_norm_backward(dy, cache)
            fn = lambda t, w, b: nn.functional.group_norm(t, G, w, b, 1e-5)  # noqa: E731
        r64 = _torch_grads(fn, x, gamma, beta, dy)
        r32 = _torch_f32(lambda *a: _torch_grads(fn, *a), x, gamma, beta, dy)
        scales = natural_scales(torch.from_numpy(dy), torch.from_numpy(gamma), 1e-5)
        for k, v in zip(("out", "grad_input", "grad_weight", "grad_bias"), (y, dx, dg, dbeta)):
            _np_close(k, v, r64[k], problems, noise_tol(r32[k], r64[k]), scales.get(k, 0.0))
        return
    x64 = nrng.normal(cfg["shift"], 1.0, size=shape)
    gamma, beta, dy64 = nrng.normal(size=c), nrng.normal(size=c), nrng.normal(size=shape)
    if cfg["kind"] == "functions":  # teaching and fast paths in float64 against torch
        fn = lambda t, w, b: nn.functional.batch_norm(t, None, None, w, b, True, 0.1, 1e-5)  # noqa: E731
        r64 = _torch_grads(fn, x64, gamma, beta, dy64)
        r32 = _torch_f32(lambda *a: _torch_grads(fn, *a), x64, gamma, beta, dy64)
        for name, fwd, bwd in (
            ("teaching", bnp.batch_norm_forward, bnp.batch_norm_backward),
            ("fast", bnp.batch_norm_forward_fast, bnp.batch_norm_backward_fast),
        ):
            y, cache = fwd(x64, gamma, beta, 1e-5)
            got = (y,) + tuple(bwd(dy64, cache))
            for k, v in zip(("out", "grad_input", "grad_weight", "grad_bias"), got):
                _np_close(f"{name} {k}", v, r64[k], problems, noise_tol(r32[k], r64[k]))
        return
    # float32: each NumPy path's error vs the float64 truth, against torch float32's error
    x32, g32, b32, dy32 = (a.astype(np.float32) for a in (x64, gamma, beta, dy64))
    truth = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x32, g32, b32)]
    yt = nn.functional.batch_norm(truth[0], None, None, truth[1], truth[2], True, 0.1, 1e-5)
    yt.backward(torch.from_numpy(dy32.astype(np.float64)))
    tt = [torch.tensor(a, requires_grad=True) for a in (x32, g32, b32)]
    y32t = nn.functional.batch_norm(tt[0], None, None, tt[1], tt[2], True, 0.1, 1e-5)
    y32t.backward(torch.from_numpy(dy32))
    ref = {
        "out": yt.detach().numpy(),
        "grad_input": truth[0].grad.numpy(),
        "grad_weight": truth[1].grad.numpy(),
        "grad_bias": truth[2].grad.numpy(),
    }
    tor = {
        "out": y32t.detach().numpy(),
        "grad_input": tt[0].grad.numpy(),
        "grad_weight": tt[1].grad.numpy(),
        "grad_bias": tt[2].grad.numpy(),
    }
    floor = FLOOR_ULPS * float(np.finfo(np.float32).eps)
    for name, fwd, bwd in (
        ("teaching", bnp.batch_norm_forward, bnp.batch_norm_backward),
        ("fast", bnp.batch_norm_forward_fast, bnp.batch_norm_backward_fast),
    ):
        y, cache = fwd(x32, g32, b32, 1e-5)
        got = dict(zip(("grad_input", "grad_weight", "grad_bias"), bwd(dy32, cache)))
        got["out"] = y
        for k, v in got.items():
            if np.asarray(v).dtype != np.float32:
                problems.append(f"{name} {k}: dtype {np.asarray(v).dtype}, expected float32")
            scale = max(np.abs(ref[k]).max(), 1e-300)
            eo = np.abs(np.asarray(v, np.float64) - ref[k]).max() / scale
            et = np.abs(tor[k].astype(np.float64) - ref[k]).max() / scale
            if not eo <= RATIO * et + floor:
                problems.append(
                    f"{name} float32 {k}: error vs float64 truth {eo:.3g}, torch's {et:.3g}"
                )


# --- driver --------------------------------------------------------------------------------


def case_config(i: int) -> dict:
    rng = random.Random(i)
    r = rng.random()
    if r < 0.55:
        return {"case": "module", **module_config(rng)}
    if r < 0.70:
        return {"case": "functional", **functional_config(rng, bad=False)}
    if r < 0.88:
        if rng.random() < 0.75:
            return {"case": "bad", **bad_config(rng)}
        return {"case": "bad_functional", **functional_config(rng, bad=True)}
    return {"case": "numpy", **numpy_config(rng)}


def run_case(i: int) -> tuple[list[str], list[str], dict]:
    """Divergences and torch bugs found by case ``i``, and its configuration."""
    cfg = case_config(i)
    rng = random.Random(10**6 + i)
    g = torch.Generator().manual_seed(i)
    problems, bugs = [], []
    kind = cfg["case"]
    if kind in ("module", "bad"):
        run_module_case(rng, g, cfg, i, problems, bugs)
    elif kind in ("functional", "bad_functional"):
        run_functional_case(rng, g, cfg, problems, bugs)
    else:
        run_numpy_case(rng, g, cfg, problems, bugs)
    return problems, bugs, cfg


def label(cfg: dict) -> str:
    k = cfg["case"]
    if k in ("module", "bad"):
        s = f"{cfg['name']} {str(cfg['mod_dtype'])[6:]}/{str(cfg['in_dtype'])[6:]}"
        return s + f" {cfg['layout']}" + (f" bad={cfg['bad']}" if k == "bad" else "")
    if k in ("functional", "bad_functional"):
        return f"{k} F.{cfg['kind']} {str(cfg['dtype'])[6:]} {cfg['layout']}"
    return f"numpy {cfg['kind']}"


def run_range(start: int, stop: int, verbose: bool = False):
    failures, bugs = [], []
    for i in range(start, stop):
        problems, b, cfg = run_case(i)
        if problems:
            failures.append((i, cfg, problems))
        if b:
            bugs.append((i, cfg, b))
    return failures, bugs


def _kind_of(cfg, problem):
    what = (
        "error"
        if ("raised" in problem)
        else (
            "stride"
            if "strides" in problem
            else (
                "dtype" if "dtype" in problem else ("accuracy" if "error" in problem else "other")
            )
        )
    )
    name = cfg.get("name", cfg.get("kind"))
    return f"{cfg['case']}:{name}:{what}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", type=int, help="run one case and print its details")
    p.add_argument("--cases", default="0:10000", help="START:STOP (default 0:10000)")
    p.add_argument("--show", type=int, default=40, help="reproducers to print (default 40)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.case is not None:
        problems, bugs, cfg = run_case(args.case)
        print(f"case {args.case}: {cfg}")
        for b in bugs:
            print(f"  torch bug: {b}")
        for pr in problems:
            print(f"  DIVERGENCE: {pr}")
        print("  pass" if not problems else f"  {len(problems)} divergence(s)")
        return 1 if problems else 0
    start, stop = (int(v) for v in args.cases.split(":"))
    t0 = time.perf_counter()
    failures, bugs = run_range(start, stop)
    kinds: dict[str, int] = {}
    for i, cfg, problems in failures:
        for k in {_kind_of(cfg, pr) for pr in problems}:
            kinds[k] = kinds.get(k, 0) + 1
    print(
        f"{stop - start} cases in {time.perf_counter() - t0:.0f} s: "
        f"{len(failures)} with divergences, {len(bugs)} with torch bugs (documented)"
    )
    for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {n:5d}  {k}")
    for i, cfg, b in bugs[:5]:
        print(f"  torch bug, case {i} ({label(cfg)}): {b[0]}")
    for i, cfg, problems in failures[: args.show]:
        print(f"  python -m tests.fuzz --case {i}   # {label(cfg)}: {problems[0][:150]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
