"""The float64 data-parallel experiment (bnlib.experiments.sync_bn): the synchronized runs
agree across the two processes, synchronized BN trains with one sample per process, and
every mode is reported."""
from bnlib.experiments.sync_bn import local_and_sync_accuracy, sync_demo
from bnlib.experiments.data_parallel import launch


def test_two_processes_agree_and_every_mode_is_reported():
    r0, r1 = launch(sync_demo, 2, (1, 2), (1, 2), (0,), 5)
    assert all(r0["accuracy"][k] == r1["accuracy"][k] for k in r0["accuracy"] if k[0] == "sync")
    assert set(r0["accuracy"]) == {("sync", 1, 0), ("local", 2, 0), ("sync", 2, 0)}
    assert all(0 <= a <= 1 for a in r0["accuracy"].values())
    assert ("local", 1) not in r0["error"] and r0["error"][("sync", 1)] > 0
