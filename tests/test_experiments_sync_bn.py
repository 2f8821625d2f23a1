"""The float64 data-parallel experiment (bnlib.experiments.sync_bn): both processes choose
the same learning rate for each mode on validation, the chosen rate is the best one tried
and lies strictly inside the slice searched, the synchronized runs agree across the two
processes, synchronized BN trains with one sample per process, and every mode and
reported seed is there."""

from bnlib.experiments.data_parallel import launch
from bnlib.experiments.sync_bn import sync_demo


def test_each_mode_at_its_own_rate_and_processes_agree():
    r0, r1 = launch(sync_demo, 2, (1, 2), (1, 2), (0,), 20, 1.0, (0, 1))
    a0, a1 = r0["accuracy"], r1["accuracy"]
    assert a0["lr"] == a1["lr"] and a0["val"] == a1["val"]  # one choice for all
    assert set(a0["lr"]) == {("sync", 1), ("local", 2), ("sync", 2)}
    for (mode, b), lr in a0["lr"].items():
        tried = sorted(r for (m, bb, r) in a0["val"] if (m, bb) == (mode, b))
        assert len(tried) >= 3 and tried[0] < lr < tried[-1]
        assert a0["val"][(mode, b, lr)] == max(a0["val"][(mode, b, r)] for r in tried)
    assert set(a0["test"]) == {(m, b, s) for (m, b) in a0["lr"] for s in (0, 1)}
    assert all(a0["test"][k] == a1["test"][k] for k in a0["test"] if k[0] == "sync")
    assert all(0 <= a <= 1 for a in a0["test"].values())
    assert ("local", 1) not in r0["error"] and r0["error"][("sync", 1)] > 0
