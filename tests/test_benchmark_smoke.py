"""benchmarks/bn_speed.py runs end to end at small size and keeps its output contract: a
table, the targets, and one final JSON line mapping "shape/pass" to numbers. Timing values
are not asserted (the machine is shared); only their structure is."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bn_speed.py"


def load_module():
    if "bn_speed" not in sys.modules:  # dataclasses need the module registered
        spec = importlib.util.spec_from_file_location("bn_speed", SCRIPT)
        sys.modules["bn_speed"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["bn_speed"])
    return sys.modules["bn_speed"]


def test_quick_run_prints_table_targets_and_json_line():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", "--repeats", "1", "--no-compile"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    bn_speed = load_module()
    expected = {
        "x".join(map(str, s)) + "/" + p for s in bn_speed.QUICK_SHAPES for p in bn_speed.PASSES
    }
    for key in (
        "ratios_fast_numpy_vs_native",
        "bandwidth_fraction_fast_numpy",
        "ratios_eager_vs_native",
    ):
        assert set(summary[key]) == expected, key
        assert all(
            isinstance(v, (int, float)) and math.isfinite(v) and v > 0
            for v in summary[key].values()
        ), summary[key]
    for key in ("ratios_fast_fresh_vs_native", "ratios_native_out_vs_native"):  # new arms
        assert set(summary[key]) == expected, key
    assert set(summary["relative_iqr"]) == set(bn_speed.VARIANTS) - {"bt-compiled"} | {"copy"}
    assert all(set(v) == expected for v in summary["relative_iqr"].values())
    assert summary["repeats"] == 1
    table = [line for line in lines if line.startswith("| (")]
    assert len(table) == len(expected) * len(bn_speed.VARIANTS)
    assert all("skipped (--no-compile)" in line for line in table if "bt-compiled" in line)
    assert sum(line.startswith("target: ") for line in lines) == 4


def test_a_failing_implementation_is_reported_in_the_table_not_raised():
    bn_speed = load_module()
    case = bn_speed.Case((4, 3), "forward")
    case.fns["bt-compiled"] = lambda: (_ for _ in ()).throw(RuntimeError("no compiler\nmore"))
    case.fns["copy"] = lambda: np.zeros(3)
    bn_speed.warm_up([case])
    assert "bt-compiled" not in case.fns
    assert case.unavailable["bt-compiled"] == "failed: RuntimeError: no compiler"


def test_missing_compiler_is_detected(monkeypatch):
    bn_speed = load_module()
    monkeypatch.setattr(bn_speed.shutil, "which", lambda name: None)
    assert "no C++ compiler" in bn_speed.compile_reason()


def test_native_out_arm_computes_what_f_batch_norm_computes():
    """The reused-buffer arm calls aten's out= forms; they must give F.batch_norm's results."""
    import torch
    import torch.nn.functional as F

    bn_speed = load_module()
    rng = np.random.default_rng(1)
    for shape in [(16, 3), (4, 3, 5, 6)]:
        x = rng.standard_normal(shape, dtype=np.float32) * 3 + 1
        dy = rng.standard_normal(shape, dtype=np.float32)
        gamma = rng.uniform(0.5, 1.5, shape[1]).astype(np.float32)
        beta = rng.standard_normal(shape[1]).astype(np.float32)
        xt, wt, bt_ = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, gamma, beta))
        ref = F.batch_norm(xt, None, None, wt, bt_, training=True)
        ref.backward(torch.from_numpy(dy))
        run = bn_speed.native_out_fn(x, gamma, beta, dy, backward=True)
        for _ in range(2):  # the second call reuses the buffers of the first
            y, dx, dw, db = run()
        for mine, theirs in ((y, ref), (dx, xt.grad), (dw, wt.grad), (db, bt_.grad)):
            torch.testing.assert_close(mine, theirs.detach(), rtol=1e-5, atol=1e-5)
        y_only = bn_speed.native_out_fn(x, gamma, beta, dy, backward=False)()
        assert y_only[1:] == (None, None, None)
        torch.testing.assert_close(y_only[0], ref.detach(), rtol=1e-5, atol=1e-5)
