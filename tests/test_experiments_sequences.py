"""The sequence-normalization demonstration: padding, masks, and which norms let a token's
output depend on anything but the token itself. References: torch.nn.functional."""

import pytest
import torch
import torch.nn.functional as F

from bnlib.experiments.sequences import (
    KINDS,
    check_masked_batch_norm,
    masked_batch_norm,
    normalize_tokens,
    pad_sequences,
    padding_drift,
    random_sequences,
    sequence_drift,
)

TOL = {"rtol": 1e-10, "atol": 1e-12}


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    seqs = random_sequences(g, [6, 3, 9, 5], d_model=8)
    others = random_sequences(g, [4, 8, 2], d_model=8)
    return seqs, others


def test_pad_sequences_places_tokens_and_zeros(batch):
    seqs, _ = batch
    x, mask = pad_sequences(seqs, length=11)
    assert x.shape == (4, 11, 8) and x.dtype == torch.float64 and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [6, 3, 9, 5]
    for b, s in enumerate(seqs):
        assert torch.equal(x[b, : len(s)], s)
        assert torch.count_nonzero(x[b, len(s) :]) == 0
    assert pad_sequences(seqs)[0].shape == (4, 9, 8)


def test_pad_sequences_rejects_bad_input(batch):
    seqs, _ = batch
    with pytest.raises(ValueError, match="longest sequence 9"):
        pad_sequences(seqs, length=8)
    with pytest.raises(ValueError, match=r"shape \(T, 8\)"):
        pad_sequences([seqs[0], torch.zeros(3, 5, dtype=torch.float64)])
    with pytest.raises(ValueError, match="at least one"):
        pad_sequences([])
    with pytest.raises(ValueError, match="lengths >= 1"):
        random_sequences(torch.Generator(), [3, 0])


def test_masked_batch_norm_equals_batch_norm_of_the_real_tokens(batch):
    seqs, _ = batch
    x, mask = pad_sequences(seqs, length=12)
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(8, generator=g, dtype=torch.float64)
    bias = torch.randn(8, generator=g, dtype=torch.float64)
    out = masked_batch_norm(x, mask, weight, bias, eps=1e-5)
    ref = F.batch_norm(x[mask], None, None, weight, bias, training=True, eps=1e-5)  # (n, D)
    torch.testing.assert_close(out[mask], ref, **TOL)
    assert torch.count_nonzero(out[~mask]) == 0


def test_masked_batch_norm_ignores_what_the_padding_holds(batch):
    seqs, _ = batch
    x, mask = pad_sequences(seqs)
    garbage = x.masked_fill(~mask.unsqueeze(-1), 1e3)
    torch.testing.assert_close(masked_batch_norm(garbage, mask), masked_batch_norm(x, mask), **TOL)


def test_masked_batch_norm_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(2)
    x, mask = pad_sequences(random_sequences(g, [3, 2, 4], d_model=3))
    x.requires_grad_(True)
    weight = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, w, b: masked_batch_norm(a, mask, w, b), (x, weight, bias), eps=1e-6, atol=1e-6
    )


def test_masked_batch_norm_rejects_bad_input():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"expected 3D input \(got 2D input\)"):
        masked_batch_norm(x[0], torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask of shape \(2, 3\)"):
        masked_batch_norm(x, torch.ones(2, 4, dtype=torch.bool))
    one = torch.zeros(2, 3, dtype=torch.bool)
    one[0, 0] = True
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        masked_batch_norm(x, one)


def test_normalize_tokens_matches_torch_references(batch):
    seqs, _ = batch
    x, mask = pad_sequences(seqs, length=10)
    d = x.shape[-1]
    bn = normalize_tokens("batch", x, mask)
    # Batch norm over (batch, time): per feature, statistics over all B*T positions, padding included.
    ref_bn = F.batch_norm(x.reshape(-1, d), None, None, training=True, eps=1e-5).reshape(x.shape)
    torch.testing.assert_close(bn, ref_bn, **TOL)
    module = torch.nn.BatchNorm1d(d, dtype=torch.float64).train()
    torch.testing.assert_close(bn, module(x.transpose(1, 2)).transpose(1, 2).detach(), **TOL)
    torch.testing.assert_close(
        normalize_tokens("layer", x, mask), F.layer_norm(x, (d,), eps=1e-5), **TOL
    )
    torch.testing.assert_close(
        normalize_tokens("rms", x, mask), F.rms_norm(x, (d,), eps=1e-5), **TOL
    )
    torch.testing.assert_close(
        normalize_tokens("masked batch", x, mask), masked_batch_norm(x, mask), **TOL
    )
    with pytest.raises(ValueError, match="expected kind"):
        normalize_tokens("instance", x, mask)
    with pytest.raises(ValueError, match=r"expected 3D input \(got 2D input\)"):
        normalize_tokens("layer", x[0], mask[0])


def test_only_per_token_norms_are_immune_to_padding_batch_and_future(batch):
    seqs, others = batch
    drift = {kind: sequence_drift(kind, seqs, others) for kind in KINDS}
    # BatchNorm over (batch, time): every perturbation moves the probe's outputs.
    assert min(drift["batch"].padding, drift["batch"].batch, drift["batch"].future) > 0.05
    # Masking removes the padding dependence, not the dependence on other tokens.
    assert drift["masked batch"].padding < 1e-12
    assert min(drift["masked batch"].batch, drift["masked batch"].future) > 0.05
    for kind in ("layer", "rms"):
        assert max(drift[kind].padding, drift[kind].batch, drift[kind].future) < 1e-12


def test_padding_drift_grows_with_padding_for_batch_norm_only(batch):
    seqs, _ = batch
    extra = [0, 1, 4, 16]
    bn = padding_drift("batch", seqs, extra)
    assert bn.shape == (4,) and bn[0] == 0.0
    assert all(b > a for a, b in zip(bn, bn[1:]))
    for kind in ("masked batch", "layer", "rms"):
        assert padding_drift(kind, seqs, extra).max() < 1e-12


def test_probe_needs_two_tokens(batch):
    seqs, others = batch
    with pytest.raises(ValueError, match="at least 2 tokens"):
        sequence_drift("layer", [seqs[0][:1], *seqs[1:]], others)


def test_checker_passes_the_reference_and_fails_common_mistakes():
    ok = check_masked_batch_norm(lambda x, mask, eps: masked_batch_norm(x, mask, eps=eps))
    assert ok.passed and ok.value < 1e-12 and "equals" in ok.evidence

    def with_padding(x, mask, eps):  # statistics over every position, padding included
        return normalize_tokens("batch", x, mask, eps)

    def unbiased(x, mask, eps):  # right positions, n - 1 in the variance
        m = mask.unsqueeze(-1).to(x.dtype)
        n = m.sum()
        mean = (x * m).sum(dim=(0, 1)) / n
        var = ((x - mean).square() * m).sum(dim=(0, 1)) / (n - 1)
        return ((x - mean) / torch.sqrt(var + eps)) * m

    def padding_not_zeroed(x, mask, eps):
        out = masked_batch_norm(x, mask, eps=eps)
        return out + (~mask).unsqueeze(-1).to(x.dtype)

    for wrong in (with_padding, unbiased):
        result = check_masked_batch_norm(wrong)
        assert not result.passed and result.value > 1e-6 and "differs" in result.evidence
    assert "not 0" in check_masked_batch_norm(padding_not_zeroed).evidence
    assert "shape" in check_masked_batch_norm(lambda x, mask, eps: x[0]).evidence

    def broken(x, mask, eps):
        raise NotImplementedError("write me")

    assert check_masked_batch_norm(broken).evidence.startswith("raised NotImplementedError")
