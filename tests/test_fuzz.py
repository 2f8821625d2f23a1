"""The CI slice of the differential fuzz (tests/fuzz.py): cases 0-1999 against torch.nn, in
20 chunks of 100 (so xdist can spread them). The full 10,000 cases are one command:
``OMP_NUM_THREADS=1 python -m tests.fuzz --cases 0:10000``; any case reruns alone with
``python -m tests.fuzz --case N``.

``KNOWN_DIVERGENCES`` lists the cases of the slice where bnlib.torch still differs from
torch.nn (open bugs of bnlib, not of torch: torch's own bugs are handled in fuzz.py). Every
other case of the slice must pass, so a new divergence fails CI; each listed case is a strict
expected failure, so one that starts passing fails CI too and must leave the table. The
tolerances are fuzz.py's, unchanged for these cases. The same list is in tests/README.md.
"""

import pytest

from fuzz import label, run_case, run_range

CHUNK = 100
SLICE = 2000

# case: (what differs from torch.nn 2.13, why it is not fixed yet)
KNOWN_DIVERGENCES = {
    532: (
        "BatchNorm3d float16, channels_last-like input with size-1 dims: grad_input strides "
        "channels_last, torch contiguous",
        "torch's layout choice for size-1-dim inputs in backward not yet reproduced "
        "(_stats.output_format follows the forward rule)",
    ),
    1128: (
        "BatchNorm3d bfloat16, permuted input with size-1 dims: grad_input strides "
        "channels_last, torch contiguous",
        "same as 532",
    ),
    1626: (
        "BatchNorm3d float32 module, bfloat16 permuted input with size-1 dims: grad_input "
        "strides channels_last, torch contiguous",
        "same as 532",
    ),
    643: (
        "F.group_norm float64, permuted input: grad_weight 3.1e-7 relative to torch (tol 1e-9)",
        "torch is itself wrong on this strided input (out, grad_input); the "
        "weight gradient comparison has not been re-checked against a float64 truth",
    ),
    1237: (
        "GroupNorm float64, channels_last input: output 4.6e-9 relative to torch (tol 1e-9)",
        "summation order of the channels_last path not matched; not analysed",
    ),
    1703: (
        "GroupNorm(1, 1) float64, size-1-dim strides (2, 1, 2): grad_input strides "
        "(2, 2, 1), torch (1, 4, 2)",
        "torch's backward layout for size-1 dims in "
        "GroupNorm not reproduced (_common.suggest_memory_format)",
    ),
    1531: (
        "InstanceNorm1d float64 module, float32 input: running_mean 3.1e-7 relative to "
        "torch (tol 1e-9)",
        "buffers are now updated in the input's dtype as torch does "
        "(fixed running_var and case 1258); the float32 batch mean still differs from "
        "torch's by a few ulp",
    ),
    1051: (
        "BatchNorm2d float32, expanded (stride-0) input: output error 4.0e-5 vs float64 "
        "truth, torch 7.7e-6",
        "float32 accuracy on stride-0 inputs (issue 10 item 3) not yet improved",
    ),
    1655: (
        "InstanceNorm1d float16 module, float32 channels_last input: grad_input error "
        "2.9e-6 vs float64 truth, torch 2.2e-8",
        "float32 backward accuracy (issue 10 item 3) not yet improved",
    ),
    1736: (
        "InstanceNorm2d float32, sliced input: grad_input error 7.0e-6 vs float64 truth, "
        "torch 1.3e-6",
        "float32 backward accuracy (issue 10 item 3) not yet improved",
    ),
}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("start", range(0, SLICE, CHUNK))
def test_fuzz_slice_matches_torch(start):
    failures, _ = run_range(start, start + CHUNK)
    failures = [f for f in failures if f[0] not in KNOWN_DIVERGENCES]
    lines = [
        f"python -m tests.fuzz --case {i}   # {label(cfg)}: {problems[0][:200]}"
        for i, cfg, problems in failures
    ]
    assert not failures, f"{len(failures)} divergent cases:\n" + "\n".join(lines)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(i, marks=pytest.mark.xfail(strict=True, reason=f"{what}; {why}"))
        for i, (what, why) in sorted(KNOWN_DIVERGENCES.items())
    ],
)
def test_known_divergence(case):
    problems, _, _ = run_case(case)
    assert not problems, f"python -m tests.fuzz --case {case}: " + "; ".join(problems)
