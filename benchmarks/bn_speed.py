"""Batch normalization speed at one thread: five implementations (two also with the other kind of
output) against a memory copy.

For float32 inputs of shape (4096, 1024), (64, 64, 56, 56) and (256, 128, 14, 14), the
forward pass and the forward plus backward pass (training mode, affine) of

* ``teaching``: ``bnlib.numpy.batch_norm_forward`` / ``batch_norm_backward``;
* ``fast``: ``bnlib.numpy.batch_norm_forward_fast`` / ``batch_norm_backward_fast`` with
  reused ``out=`` buffers;
* ``fast-fresh``: the same, allocating fresh outputs (no ``out=``), as ``native`` does;
* ``bt-eager``: ``bnlib.torch.batch_norm`` with autograd;
* ``bt-compiled``: the same under ``torch.compile`` (needs a C++ compiler);
* ``native``: ``torch.nn.functional.batch_norm``, PyTorch's own CPU kernel, which allocates
  a fresh output on every call;
* ``native-out``: the same kernel through ``torch.ops.aten.native_batch_norm.out``, writing
  into reused buffers (the backward's ``out=`` form is generated: it computes a fresh result
  and copies it, so forward plus backward still allocates one array);

are timed in one process, one thread (``torch.set_num_threads(1)``; NumPy's BLAS limited to
one thread with threadpoolctl and the usual environment variables), the implementations
alternating within every repeat, medians reported. Bandwidth counts the bytes a two-pass
kernel moves: ``3S`` forward (read ``x`` twice, write ``y``) and ``8S`` forward plus backward, for a
tensor of ``S`` bytes, and is given as a fraction of the bandwidth of ``np.copyto`` on the
same tensor (``2S`` bytes) measured in the same repeats. ``fast`` against ``native-out``
compares kernels, ``fast-fresh`` against ``native`` the calls a user writes: a fresh output
larger than glibc's 32 MiB mmap limit is not recycled and page-faults on every call. The
JSON's ``relative_iqr`` gives each median's within-run spread.

Usage::

    python benchmarks/bn_speed.py                 # full run, prints the table
    python benchmarks/bn_speed.py --json          # ... and a final JSON line
    python benchmarks/bn_speed.py --quick --repeats 3 --no-compile --json   # smoke test

A run the book shows is recorded as package data in ``bnlib/records/`` (its README says how).

The clock is the process's CPU time by default (``--clock cpu``), which a machine shared with
other jobs disturbs less than wall time; ``--clock wall`` uses ``time.perf_counter``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before NumPy and torch load their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bnlib.torch as bt  # noqa: E402
from bnlib.timing import time_alternating  # noqa: E402
from bnlib.numpy import (  # noqa: E402
    batch_norm_backward,
    batch_norm_backward_fast,
    batch_norm_forward,
    batch_norm_forward_fast,
)

FULL_SHAPES = [(4096, 1024), (64, 64, 56, 56), (256, 128, 14, 14)]
QUICK_SHAPES = [(256, 64), (4, 16, 14, 14), (16, 32, 7, 7)]
PASSES = {"forward": 3, "forward+backward": 8}  # bytes moved, in units of S
VARIANTS = ["teaching", "fast", "fast-fresh", "bt-eager", "bt-compiled", "native", "native-out"]
TARGETS = {
    "fast_vs_native": 1.0,
    "compiled_vs_native_nchw": 1.0,
    "fast_bandwidth": 0.3,
    "eager_fwd_bwd_vs_native": 1.5,
}


def limit_threads() -> str:
    """One thread for torch and for NumPy's BLAS; returns a description of the BLAS."""
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return "threadpoolctl missing; BLAS threads from OPENBLAS_NUM_THREADS=1"
    threadpool_limits(1)
    return ", ".join(
        f"{i['internal_api']} {i.get('version')} {i.get('architecture', '')} "
        f"threads={i['num_threads']}"
        for i in threadpool_info()
    )


@dataclass
class Case:
    """One shape and pass: a callable per implementation, plus the copy reference."""

    shape: tuple
    pass_name: str
    fns: dict = field(default_factory=dict)
    unavailable: dict = field(default_factory=dict)  # variant -> reason

    @property
    def key(self) -> str:
        return "x".join(map(str, self.shape)) + "/" + self.pass_name

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4


def numpy_fns(x, gamma, beta, dy, backward: bool) -> dict:
    y_buf, dx_buf = np.empty_like(x), np.empty_like(x)

    def teaching():
        y, cache = batch_norm_forward(x, gamma, beta)
        if backward:
            batch_norm_backward(dy, cache)

    def fast():
        y, cache = batch_norm_forward_fast(x, gamma, beta, out=y_buf)
        if backward:
            batch_norm_backward_fast(dy, cache, out=dx_buf)

    def fast_fresh():
        y, cache = batch_norm_forward_fast(x, gamma, beta)
        if backward:
            batch_norm_backward_fast(dy, cache)

    return {"teaching": teaching, "fast": fast, "fast-fresh": fast_fresh}


def native_out_fn(x, gamma, beta, dy, backward: bool, eps: float = 1e-5):
    """A callable running PyTorch's CPU kernel into reused buffers (aten's ``out=`` forms).

    It returns its outputs ``(y, dx, dgamma, dbeta)`` (the last three ``None`` without
    ``backward``), so that a test can compare them with ``F.batch_norm``.
    """
    xt, wt, bt_ = (torch.from_numpy(a.copy()) for a in (x, gamma, beta))
    dyt = torch.from_numpy(dy)
    c = xt.shape[1]
    y, mean, invstd = torch.empty_like(xt), torch.empty(c), torch.empty(c)
    dx, dw, db = torch.empty_like(xt), torch.empty(c), torch.empty(c)
    aten = torch.ops.aten

    def run():
        aten.native_batch_norm.out(
            xt, wt, bt_, None, None, True, 0.1, eps, out=y, save_mean=mean, save_invstd=invstd
        )
        if not backward:
            return y, None, None, None
        grads = dict(out0=dx, out1=dw, out2=db)  # dx, dgamma, dbeta
        aten.native_batch_norm_backward.out(
            dyt, xt, wt, None, None, mean, invstd, True, eps, [True] * 3, **grads
        )
        return y, dx, dw, db

    return run


def torch_fn(fn, x, gamma, beta, dy, backward: bool):
    """A callable running ``fn`` (F.batch_norm's signature) in training mode."""
    xt, wt, bt_ = (torch.from_numpy(a.copy()) for a in (x, gamma, beta))
    dyt = torch.from_numpy(dy)
    if not backward:

        def run():
            with torch.no_grad():
                fn(xt, None, None, wt, bt_, True)

        return run
    for t in (xt, wt, bt_):
        t.requires_grad_(True)

    def run_backward():
        fn(xt, None, None, wt, bt_, True).backward(dyt)
        xt.grad = wt.grad = bt_.grad = None  # as zero_grad(set_to_none=True)

    return run_backward


def compile_reason() -> str | None:
    """Why torch.compile cannot run here, or None."""
    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        return "no C++ compiler on PATH (torch.compile's CPU backend needs one)"
    return None


def build_cases(shapes, use_compile: bool, rng) -> list[Case]:
    cases = []
    reason = None if use_compile else "skipped (--no-compile)"
    reason = reason or compile_reason()
    for shape in shapes:
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        gamma = (1.0 + 0.1 * rng.standard_normal(shape[1])).astype(np.float32)
        beta = (0.1 * rng.standard_normal(shape[1])).astype(np.float32)
        for pass_name in PASSES:
            backward = pass_name != "forward"
            case = Case(shape, pass_name)
            case.fns.update(numpy_fns(x, gamma, beta, dy, backward))
            case.fns["bt-eager"] = torch_fn(bt.batch_norm, x, gamma, beta, dy, backward)
            if reason is None:
                compiled = torch.compile(bt.batch_norm, dynamic=False)
                case.fns["bt-compiled"] = torch_fn(compiled, x, gamma, beta, dy, backward)
            else:
                case.unavailable["bt-compiled"] = reason
            case.fns["native"] = torch_fn(F.batch_norm, x, gamma, beta, dy, backward)
            case.fns["native-out"] = native_out_fn(x, gamma, beta, dy, backward)
            copy_dst = np.empty_like(x)
            case.fns["copy"] = lambda dst=copy_dst, src=x: np.copyto(dst, src)
            cases.append(case)
    return cases


def warm_up(cases: list[Case]) -> None:
    """Run everything twice (compiles, first-touch page faults); record what fails."""
    for case in cases:
        for name in list(case.fns):
            try:
                case.fns[name]()
                case.fns[name]()
            except Exception as err:  # a failing compile must not stop the benchmark
                del case.fns[name]
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                case.unavailable[name] = f"failed: {type(err).__name__}: {first[:80]}"


def measure(cases: list[Case], repeats: int, clock) -> tuple[dict, dict]:
    """Median seconds and relative interquartile range per (case key, variant); all
    variants of all cases alternate inside every repeat (:func:`bnlib.timing.time_alternating`;
    ``warm_up`` ran them already)."""
    flat = {(c.key, name): fn for c in cases for name, fn in c.fns.items()}
    samples = time_alternating(flat, repeats=repeats, clock=clock, warmup=0)
    med = {k: statistics.median(v) for k, v in samples.items()}
    iqr = {k: float(np.subtract(*np.percentile(v, [75, 25]))) / med[k] for k, v in samples.items()}
    return med, iqr


def report(cases, med, args, blas: str, iqr: dict | None = None) -> dict:
    """Print the table and the targets; return the JSON summary."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"# bn_speed: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"# python {platform.python_version()}, numpy {np.__version__}, torch "
        f"{torch.__version__}, torch threads {torch.get_num_threads()}; BLAS: {blas}"
    )
    print(
        f"# clock: {args.clock} time, median of {args.repeats} alternating repeats; float32; "
        "bandwidth counts 3S bytes forward, 8S forward+backward"
    )
    print()
    print(
        "| shape | pass | copy GB/s | implementation | median ms | x native | GB/s "
        "| fraction of copy |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|")
    summary = {
        "ratios_fast_numpy_vs_native": {},
        "bandwidth_fraction_fast_numpy": {},
        "ratios_compiled_vs_native": {},
        "ratios_eager_vs_native": {},
        "bandwidth_fraction_native": {},
        "copy_bandwidth_gbps": {},
        "ratios_fast_fresh_vs_native": {},
        "ratios_native_out_vs_native": {},
        "relative_iqr": {},  # variant -> case -> (q3 - q1) / median of its repeats
        "clock": args.clock,
        "repeats": args.repeats,
        "load_average_1min": round(load[0], 2),
    }
    for case in cases:
        t_copy = med[(case.key, "copy")]
        copy_bw = 2 * case.nbytes / t_copy / 1e9
        t_native = med.get((case.key, "native"))
        moved = PASSES[case.pass_name] * case.nbytes
        summary["copy_bandwidth_gbps"][case.key] = round(copy_bw, 2)
        if iqr is not None:
            summary["relative_iqr"].setdefault("copy", {})[case.key] = round(
                iqr[(case.key, "copy")], 3
            )
        for name in VARIANTS:
            cells = [str(case.shape), case.pass_name, f"{copy_bw:.1f}", name]
            if name in case.unavailable:
                print("| " + " | ".join(cells + [case.unavailable[name], "", "", ""]) + " |")
                continue
            t = med[(case.key, name)]
            bw = moved / t / 1e9
            ratio = t / t_native
            if iqr is not None:
                summary["relative_iqr"].setdefault(name, {})[case.key] = round(
                    iqr[(case.key, name)], 3
                )
            print(
                "| "
                + " | ".join(
                    cells + [f"{t * 1e3:.2f}", f"{ratio:.2f}", f"{bw:.1f}", f"{bw / copy_bw:.2f}"]
                )
                + " |"
            )
            if name == "fast":
                summary["ratios_fast_numpy_vs_native"][case.key] = round(ratio, 3)
                summary["bandwidth_fraction_fast_numpy"][case.key] = round(bw / copy_bw, 3)
            elif name == "bt-compiled":
                summary["ratios_compiled_vs_native"][case.key] = round(ratio, 3)
            elif name == "bt-eager":
                summary["ratios_eager_vs_native"][case.key] = round(ratio, 3)
            elif name == "native":
                summary["bandwidth_fraction_native"][case.key] = round(bw / copy_bw, 3)
            elif name == "fast-fresh":
                summary["ratios_fast_fresh_vs_native"][case.key] = round(ratio, 3)
            elif name == "native-out":
                summary["ratios_native_out_vs_native"][case.key] = round(ratio, 3)
    print()
    fast_r = summary["ratios_fast_numpy_vs_native"]
    fast_bw = summary["bandwidth_fraction_fast_numpy"]
    comp = {
        k: v
        for k, v in summary["ratios_compiled_vs_native"].items()
        if len(k.split("/")[0].split("x")) == 4
    }
    eager = {
        k: v
        for k, v in summary["ratios_eager_vs_native"].items()
        if k.endswith("/forward+backward")
    }
    checks = [
        (
            f"bnlib.torch eager forward+backward <= {TARGETS['eager_fwd_bwd_vs_native']}x native "
            "on every shape",
            max(eager.values()),
            max(eager.values()) <= TARGETS["eager_fwd_bwd_vs_native"],
        ),
        (
            f"fast NumPy <= {TARGETS['fast_vs_native']}x native on every case",
            max(fast_r.values()),
            max(fast_r.values()) <= TARGETS["fast_vs_native"],
        ),
        (
            f"bnlib.torch compiled <= {TARGETS['compiled_vs_native_nchw']}x native on NCHW",
            max(comp.values()) if comp else None,
            bool(comp) and max(comp.values()) <= TARGETS["compiled_vs_native_nchw"],
        ),
        (
            f"fast NumPy >= {TARGETS['fast_bandwidth']} of copy bandwidth on every case",
            min(fast_bw.values()),
            min(fast_bw.values()) >= TARGETS["fast_bandwidth"],
        ),
    ]
    for text, value, met in checks:
        shown = "not measured" if value is None else f"worst {value:.2f}"
        print(f"target: {text}: {shown}: {'met' if met else 'NOT met'}")
    summary["targets_met"] = {text: bool(met) for text, _, met in checks}
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"small shapes {QUICK_SHAPES} for a smoke test"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per implementation (default 21, --quick 5)",
    )
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="skip torch.compile (its first compile takes minutes)",
    )
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--json", action="store_true", help="print a final JSON line")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (5 if args.quick else 21)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    blas = limit_threads()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    cases = build_cases(
        QUICK_SHAPES if args.quick else FULL_SHAPES, not args.no_compile, np.random.default_rng(0)
    )
    warm_up(cases)
    med, iqr = measure(cases, args.repeats, clock)
    summary = report(cases, med, args, blas, iqr)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return summary


if __name__ == "__main__":
    main()
    sys.stdout.flush()
