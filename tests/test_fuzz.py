"""The CI slice of the differential fuzz (tests/fuzz.py): cases 0-1999 against torch.nn, in
20 chunks of 100 (so xdist can spread them). The full 10,000 cases are one command:
``OMP_NUM_THREADS=1 python -m tests.fuzz --cases 0:10000``; any case reruns alone with
``python -m tests.fuzz --case N``."""
import pytest

from fuzz import label, run_range

CHUNK = 100
SLICE = 2000


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("start", range(0, SLICE, CHUNK))
def test_fuzz_slice_matches_torch(start):
    failures, _ = run_range(start, start + CHUNK)
    lines = [f"python -m tests.fuzz --case {i}   # {label(cfg)}: {problems[0][:200]}"
             for i, cfg, problems in failures]
    assert not failures, f"{len(failures)} divergent cases:\n" + "\n".join(lines)
