"""The float64 data-parallel experiment (bnlib.experiments.sync_bn): both processes choose
the same learning rate for each mode on validation, the chosen rate is the best one tried
and lies strictly inside the slice searched, the synchronized runs agree across the two
processes, synchronized BN trains with one sample per process, every mode and reported seed
is there; and the one-process simulation takes the data-parallel steps (the same weights,
the same choices and accuracies)."""

import pytest

from bnlib.experiments.data_parallel import launch
from bnlib.experiments.sync_bn import (
    local_and_sync_accuracy,
    simulate_data_parallel,
    simulated_accuracy,
    sync_demo,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_mode_at_its_own_rate_processes_agree_and_the_simulation_matches():
    a0, a1 = launch(local_and_sync_accuracy, 2, (1, 2), (0,), 20, 1.0, (0, 1))
    assert a0["lr"] == a1["lr"] and a0["val"] == a1["val"]  # one choice for all
    assert set(a0["lr"]) == {("sync", 1), ("local", 2), ("sync", 2)}
    for (mode, b), lr in a0["lr"].items():
        tried = sorted(r for (m, bb, r) in a0["val"] if (m, bb) == (mode, b))
        assert len(tried) >= 3 and tried[0] < lr < tried[-1]
        assert a0["val"][(mode, b, lr)] == max(a0["val"][(mode, b, r)] for r in tried)
    assert set(a0["test"]) == {(m, b, s) for (m, b) in a0["lr"] for s in (0, 1)}
    assert all(a0["test"][k] == a1["test"][k] for k in a0["test"] if k[0] == "sync")
    assert all(0 <= a <= 1 for a in a0["test"].values())
    alone = simulated_accuracy((1, 2), (0,), 20, 1.0, (0, 1))
    assert alone["lr"] == a0["lr"] and alone["test"] == a0["test"]
    assert alone["val"] == pytest.approx(a0["val"], abs=1e-12)


def test_sync_demo_checks_the_simulation_and_reports_each_seed():
    r0, r1 = launch(sync_demo, 2, (1, 2), 4, 20, 1.0, (0, 1), 5)
    assert r0["check"]["local"] < 1e-12 and r0["check"]["sync"] < 1e-10
    assert r1["check"] == {}
    assert ("local", 1) not in r0["error"] and set(r0["error"]) == {
        ("sync", 1),
        ("local", 2),
        ("sync", 2),
    }
    assert all(len(v) == 2 and min(v) > 0 for v in r0["error"].values())
    assert r0["error"][("sync", 1)] != r1["error"][("sync", 1)]  # each rank its own rows


def test_simulation_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        simulate_data_parallel("ghost", 4, 1, 1.0, 0, None)
