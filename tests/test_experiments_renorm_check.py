"""Chapter 7's exercise grader (bnlib.experiments.renorm_check): passes the reference,
fails each plausible mistake with a message that says what is wrong."""

import torch

import bnlib.torch as bt
from bnlib.experiments.renorm_check import check_renorm_correction


def test_reference_passes():
    result = check_renorm_correction(bt.renorm_correction)
    assert result.passed and result.value < 1e-12 and "matches" in result.evidence


def test_common_mistakes_fail():
    def no_clip(mb, sb, rm, rv, eps, r_max, d_max):
        with torch.no_grad():
            s = torch.sqrt(rv + eps)
            return sb / s, (mb - rm) / s

    def no_eps(mb, sb, rm, rv, eps, r_max, d_max):
        return bt.renorm_correction(mb, sb, rm, rv, 0.0, r_max, d_max)

    def inverted(mb, sb, rm, rv, eps, r_max, d_max):
        with torch.no_grad():
            s = torch.sqrt(rv + eps)
            return (s / sb).clamp(1 / r_max, r_max), ((mb - rm) / s).clamp(-d_max, d_max)

    def with_grad(mb, sb, rm, rv, eps, r_max, d_max):
        s = torch.sqrt(rv + eps)
        return (sb / s).clamp(1 / r_max, r_max), ((mb - rm) / s).clamp(-d_max, d_max)

    for fn in (no_clip, no_eps, inverted):
        result = check_renorm_correction(fn)
        assert not result.passed and "differs" in result.evidence, fn.__name__
    assert "gradient" in check_renorm_correction(with_grad).evidence

    def crashes(*args):
        raise RuntimeError("not written yet")

    assert "raised RuntimeError" in check_renorm_correction(crashes).evidence
