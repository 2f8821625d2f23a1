"""bnlib.roofline: batch normalization's counts, the roofline, chapter 9's grader; and
bnlib.plotting.plot_roofline."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnlib.numpy import batch_norm_forward, batch_norm_forward_fast  # noqa: E402
from bnlib.plotting import plot_roofline  # noqa: E402
from bnlib.roofline import (
    FLOPS_PER_VALUE,
    TRAFFIC_PER_VALUE,
    attainable,  # noqa: E402
    check_lean_forward,
    intensity,
)


def test_counts_follow_the_two_pass_algorithm():
    # forward: mean (1) + variance (subtract, multiply, add: 3) + a x + b (2)
    assert FLOPS_PER_VALUE["forward"] == 1 + 3 + 2
    # backward: sum g (1), sum g (x - mu) (3), A g + B (x - mu) + D (5)
    assert FLOPS_PER_VALUE["forward+backward"] - FLOPS_PER_VALUE["forward"] == 1 + 3 + 5
    assert TRAFFIC_PER_VALUE["two-pass"] == {"forward": 3, "forward+backward": 3 + 5}
    assert intensity("forward") == 6 / 12
    assert intensity("forward+backward", itemsize=8) == 15 / 64


def test_channel_blocked_traffic_reads_each_tensor_once():
    # forward: read x, write y; backward adds: read x, read g, write dx
    assert TRAFFIC_PER_VALUE["channel-blocked"] == {"forward": 2, "forward+backward": 2 + 3}
    assert intensity("forward", scheme="channel-blocked") == 6 / 8
    assert intensity("forward+backward", scheme="channel-blocked") == 15 / 20
    for p in FLOPS_PER_VALUE:  # fewer bytes, higher intensity
        assert intensity(p, scheme="channel-blocked") > intensity(p)


@pytest.mark.parametrize(
    "bad",
    [
        dict(pass_name="backward"),
        dict(pass_name="forward", itemsize=0),
        dict(pass_name="forward", scheme="one-pass"),
    ],
)
def test_intensity_refuses_bad_input(bad):
    with pytest.raises(ValueError):
        intensity(**bad)


def test_attainable_is_the_minimum_of_the_two_roofs():
    i = np.array([0.01, 1.0, 10.0, 1000.0])
    got = attainable(i, bandwidth=10e9, peak=50e9)
    np.testing.assert_array_equal(got, [0.1e9, 10e9, 50e9, 50e9])
    with pytest.raises(ValueError):
        attainable(1.0, bandwidth=0.0, peak=1.0)


def chunked_forward(x, gamma, beta, eps, out):
    """The chunked solution chapter 9 stores, with Chan et al.'s merge."""
    n, c = x.shape[0], x.shape[1]
    per = (1, c) + (1,) * (x.ndim - 2)
    axes = (0,) + tuple(range(2, x.ndim))
    chunk = max(1, n // 16)
    m_total, mean, m2 = 0, np.zeros(c), np.zeros(c)
    for start in range(0, n, chunk):
        part = x[start : start + chunk]
        m = part.size // c
        mu = part.mean(axis=axes, dtype=np.float64)
        d = part - mu.astype(x.dtype).reshape(per)
        m2_part = (d * d).sum(axis=axes, dtype=np.float64)
        delta = mu - mean
        mean += delta * m / (m_total + m)
        m2 += m2_part + delta**2 * m_total * m / (m_total + m)
        m_total += m
    a = gamma / np.sqrt(m2 / m_total + eps)
    np.multiply(x, a.astype(x.dtype).reshape(per), out=out)
    np.add(out, (beta - mean * a).astype(x.dtype).reshape(per), out=out)
    return out


def into(fn):
    def run(x, gamma, beta, eps, out):
        out[...] = fn(x, gamma, beta, eps)
        return out

    return run


def test_grader_passes_lean_implementations():
    for fn in (
        chunked_forward,
        lambda x, g, b, e, out: batch_norm_forward_fast(x, g, b, e, out=out)[0],
    ):
        result = check_lean_forward(fn)
        assert result.passed, result.evidence
        assert result.value < 0.5
        assert result.evidence.startswith("PASSED")


def test_grader_fails_a_full_size_temporary():
    result = check_lean_forward(into(lambda x, g, b, e: batch_norm_forward(x, g, b, e)[0]))
    assert not result.passed
    assert "peak allocation" in result.evidence and result.value > 1.0


def unbiased(x, g, b, e):
    axes = (0,) + tuple(range(2, x.ndim))
    per = (1, -1) + (1,) * (x.ndim - 2)
    x64 = x.astype(np.float64)
    var = x64.var(axis=axes, ddof=1).reshape(per)
    return g.reshape(per) * (x64 - x64.mean(axis=axes).reshape(per)) / np.sqrt(
        var + e
    ) + b.reshape(per)


@pytest.mark.parametrize(
    "wrong",
    [
        into(unbiased),  # divides by m - 1
        lambda x, g, b, e, out: chunked_forward(x, b, g, e, out),  # gamma and beta swapped
        lambda x, g, b, e, out: chunked_forward(x, g, b, 1e-2, out),  # its own eps
    ],
    ids=["unbiased-variance", "gamma-beta-swapped", "wrong-eps"],
)
def test_grader_fails_wrong_values(wrong):
    result = check_lean_forward(wrong)
    assert not result.passed
    assert not result.evidence.startswith("PASSED")


def test_grader_fails_wrong_values_even_when_lean():
    def shifted(x, g, b, e, out):
        chunked_forward(x, g, b, e, out)
        out += np.float32(1e-3)
        return out

    result = check_lean_forward(shifted)
    assert not result.passed and "|yours - torch|" in result.evidence


def test_grader_fails_a_new_array_a_changed_input_and_an_exception():
    fresh = check_lean_forward(lambda x, g, b, e, out: batch_norm_forward_fast(x, g, b, e)[0])
    assert not fresh.passed and "out" in fresh.evidence

    def in_place(x, g, b, e, out):
        chunked_forward(x, g, b, e, out)
        x[0] = 0
        return out

    changed = check_lean_forward(in_place)
    assert not changed.passed and "changed the input" in changed.evidence

    def broken(x, g, b, e, out):
        raise RuntimeError("not yet")

    raised = check_lean_forward(broken)
    assert not raised.passed and "RuntimeError: not yet" in raised.evidence


def test_grader_fails_a_function_that_hands_the_work_to_torch():
    import torch
    import torch.nn.functional as F

    def via_torch(x, g, b, e, out):  # torch's temporaries are invisible to tracemalloc
        out[...] = F.batch_norm(
            torch.from_numpy(x),
            None,
            None,
            torch.from_numpy(g),
            torch.from_numpy(b),
            training=True,
            eps=e,
        ).numpy()
        return out

    from_numpy = torch.from_numpy  # bound before the call: the dispatch mode still refuses

    def via_bound_name(x, g, b, e, out):
        t = from_numpy(x)
        out[...] = (
            (t - t.mean((0, 2, 3), keepdim=True))
            / (t.var((0, 2, 3), unbiased=False, keepdim=True) + e).sqrt()
        ).numpy()
        return out

    for fn in (via_torch, via_bound_name):
        result = check_lean_forward(fn)
        assert not result.passed and "torch" in result.evidence, result.evidence
    assert torch.from_numpy is from_numpy  # restored
    assert torch.ones(2).sum().item() == 2.0  # torch works again after the call


def test_plot_roofline_keeps_every_point_and_the_ridge_in_view():
    fig, ax = plt.subplots()
    points = [
        dict(intensity=0.125, rate=0.2e9, label="a"),
        dict(intensity=0.5, rate=3e9, label="b", filled=False),
        dict(intensity=100.0, rate=80e9, label="c"),
    ]
    roof = plot_roofline(ax, bandwidth=10e9, peak=100e9, points=points)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for p in points:
        assert x0 < p["intensity"] < x1 and y0 < p["rate"] / 1e9 < y1
    assert x0 < 10.0 < x1  # the ridge
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert "FLOP/byte" in ax.get_xlabel() and "GFLOP/s" in ax.get_ylabel()
    assert max(roof.get_ydata()) == pytest.approx(100.0)
    plt.close(fig)
    with pytest.raises(ValueError):
        plot_roofline(ax, 0.0, 1.0, points)
