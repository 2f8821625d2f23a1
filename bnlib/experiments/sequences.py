r"""Why Transformers do not use batch normalization: normalizing padded, variable-length
token batches over (batch, time) against normalizing each token by its own features.

A batch of ``B`` sequences of lengths ``T_1, ..., T_B`` is zero-padded to ``(B, T, D)``.
Batch normalization over (batch, time) gives token ``(b, t)`` the output

.. math::

    y_{btd} = \frac{x_{btd} - \mu_d}{\sqrt{\sigma^2_d + \epsilon}}, \qquad
    \mu_d = \frac{1}{BT} \sum_{b', t'} x_{b't'd},

so every token depends on the padding and on every other token in the batch, the later
tokens of its own sequence included. Layer normalization and RMS normalization use only the
``D`` features of the token itself:

.. math::

    \text{LN}(x_{bt})_d = \frac{x_{btd} - \bar{x}_{bt}}{\sqrt{s^2_{bt} + \epsilon}}, \qquad
    \text{RMS}(x_{bt})_d = \frac{x_{btd}}{\sqrt{\tfrac{1}{D}\sum_{d'} x^2_{btd'} + \epsilon}}.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

import bnlib.torch as bt
from bnlib.audit import CheckResult

__all__ = ["KINDS", "Drift", "check_masked_batch_norm", "masked_batch_norm",
           "normalize_tokens", "pad_sequences", "padding_drift", "random_sequences",
           "sequence_drift"]

#: The normalizations compared, in order BN over (batch, time), BN over the real tokens
#: only, LayerNorm and RMSNorm over each token's features.
KINDS = ("batch", "masked batch", "layer", "rms")


def random_sequences(generator: torch.Generator, lengths: Sequence[int], d_model: int = 8,
                     offset: float = 1.0, dtype: torch.dtype = torch.float64) -> list[Tensor]:
    """Random token features ``offset + N(0, 1)``, one ``(T_i, D)`` tensor per length.

    The offset makes the features not centred, as embeddings and residual streams are not,
    so zero padding visibly pulls batch statistics.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> seqs = random_sequences(g, [3, 5], d_model=4)
        >>> [tuple(s.shape) for s in seqs]
        [(3, 4), (5, 4)]
    """
    if any(t < 1 for t in lengths):
        raise ValueError(f"expected lengths >= 1 (got {list(lengths)})")
    return [offset + torch.randn(t, d_model, generator=generator, dtype=dtype) for t in lengths]


def pad_sequences(sequences: Sequence[Tensor], length: int | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Zero-pad ``(T_i, D)`` sequences into one batch and a mask of the real tokens.

    Args:
        sequences: ``B`` tensors of shape ``(T_i, D)``.
        length: padded length ``T``; ``None`` pads to the longest sequence. Default: ``None``.

    Returns:
        ``x`` of shape ``(B, T, D)`` and a boolean ``mask`` of shape ``(B, T)``, ``True``
        at real tokens.

    Example:
        >>> x, mask = pad_sequences([torch.ones(2, 3), torch.ones(1, 3)], length=4)
        >>> tuple(x.shape), mask.sum(dim=1).tolist()
        ((2, 4, 3), [2, 1])
    """
    if len(sequences) == 0:
        raise ValueError("expected at least one sequence (got none)")
    longest = max(len(s) for s in sequences)
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"expected length >= the longest sequence {longest} (got {length})")
    d_model = sequences[0].shape[1]
    x = sequences[0].new_zeros(len(sequences), length, d_model)  # (B, T, D)
    mask = torch.zeros(len(sequences), length, dtype=torch.bool)  # (B, T)
    for b, s in enumerate(sequences):
        if s.dim() != 2 or s.shape[1] != d_model:
            raise ValueError(f"expected sequences of shape (T, {d_model}) (got {tuple(s.shape)})")
        x[b, :len(s)] = s
        mask[b, :len(s)] = True
    return x, mask


def masked_batch_norm(x: Tensor, mask: Tensor, weight: Tensor | None = None,
                      bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    r"""Batch normalization over (batch, time) that takes its statistics from real tokens only.

    .. math::

        \mu_d = \frac{\sum_{b,t} m_{bt} x_{btd}}{\sum_{b,t} m_{bt}},

        \sigma^2_d = \frac{\sum_{b,t} m_{bt} (x_{btd} - \mu_d)^2}{\sum_{b,t} m_{bt}},

        y_{btd} = m_{bt} \left(\gamma_d \frac{x_{btd} - \mu_d}{\sqrt{\sigma^2_d + \epsilon}}
        + \beta_d\right).

    Padding no longer enters the statistics, but every token still depends on the other
    sequences of the batch and on the later tokens of its own sequence. Training-mode
    statistics only (no running averages).

    Args:
        x: padded tokens.
        mask: ``True`` at real tokens.
        weight, bias: ``(D,)`` affine parameters or ``None``. Default: ``None``.
        eps: added to the variance. Default: ``1e-5``.

    Shape:
        ``x``: ``(B, T, D)``; ``mask``: ``(B, T)``; output ``(B, T, D)``, zero at padding.

    Example:
        >>> a, b = torch.tensor([[1.0], [3.0]]), torch.tensor([[5.0]])
        >>> x, mask = pad_sequences([a, b])
        >>> masked_batch_norm(x, mask, eps=0.0)[:, :, 0]
        tensor([[-1.2247,  0.0000],
                [ 1.2247,  0.0000]])
    """
    if x.dim() != 3:
        raise ValueError(f"expected 3D input (got {x.dim()}D input)")
    if mask.shape != x.shape[:2]:
        raise ValueError(f"expected mask of shape {tuple(x.shape[:2])} (got {tuple(mask.shape)})")
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    n = m.sum()
    if n < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got {int(n)} "
                         "real tokens")
    mean = (x * m).sum(dim=(0, 1)) / n  # (D,)
    var = ((x - mean).square() * m).sum(dim=(0, 1)) / n  # (D,) biased, as in training
    out = (x - mean) * torch.rsqrt(var + eps)  # (B, T, D)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out.masked_fill(~mask.unsqueeze(-1), 0.0)  # padding positions: exactly 0


def normalize_tokens(kind: str, x: Tensor, mask: Tensor, eps: float = 1e-5) -> Tensor:
    """Normalize a padded token batch with a freshly built layer of the given kind.

    ``"batch"``: :class:`bnlib.torch.BatchNorm1d` in training mode on ``(B, D, T)``, i.e.
    statistics per feature over batch and time, padding included (what a Transformer
    would get from dropping BN in for LayerNorm). ``"masked batch"``:
    :func:`masked_batch_norm`. ``"layer"``/``"rms"``: LayerNorm / RMSNorm over the ``D``
    features of each token (bnlib's when it has them, else ``torch.nn``'s). The affine
    parameters are at their initial values (1 and 0), so the outputs are the
    normalizations themselves.

    Args:
        kind: one of :data:`KINDS`.
        x: padded tokens.
        mask: ``True`` at real tokens.
        eps: added to the variance (mean square for RMSNorm). Default: ``1e-5``.

    Shape:
        ``x``: ``(B, T, D)``; ``mask``: ``(B, T)``; output ``(B, T, D)``.

    Example:
        >>> x, mask = pad_sequences([torch.randn(3, 4), torch.randn(2, 4)])
        >>> normalize_tokens("layer", x, mask).shape
        torch.Size([2, 3, 4])
    """
    if x.dim() != 3:
        raise ValueError(f"expected 3D input (got {x.dim()}D input)")
    d_model = x.shape[-1]
    if kind == "batch":
        norm: nn.Module = bt.BatchNorm1d(d_model, eps=eps, dtype=x.dtype).train()
        return norm(x.transpose(1, 2)).transpose(1, 2)  # (B, D, T) -> (B, T, D)
    if kind == "masked batch":
        return masked_batch_norm(x, mask, eps=eps)
    if kind == "layer":
        norm = getattr(bt, "LayerNorm", nn.LayerNorm)(d_model, eps=eps, dtype=x.dtype)
        return norm(x)
    if kind == "rms":
        norm = getattr(bt, "RMSNorm", nn.RMSNorm)(d_model, eps=eps, dtype=x.dtype)
        return norm(x)
    raise ValueError(f"expected kind in {list(KINDS)} (got {kind!r})")


def _probe_output(kind: str, sequences: Sequence[Tensor], length: int | None = None) -> Tensor:
    """The normalized real tokens of ``sequences[0]`` (the probe), ``(T_0, D)``."""
    x, mask = pad_sequences(sequences, length)
    with torch.no_grad():
        return normalize_tokens(kind, x, mask)[0, :len(sequences[0])]


@dataclass(frozen=True)
class Drift:
    """How much the probe sequence's normalized tokens move (largest absolute change) when
    something that is not the token itself changes.

    Attributes:
        padding: every sequence gets ``extra_padding`` more zero steps.
        batch: the other sequences of the batch are replaced by different ones.
        future: the last token of the probe changes; measured on the tokens before it
            (a causal decoder must not let a token see later ones).
    """

    padding: float
    batch: float
    future: float


def sequence_drift(kind: str, sequences: Sequence[Tensor], other_sequences: Sequence[Tensor],
                   extra_padding: int = 4) -> Drift:
    """Perturb everything but the probe token and measure how far its output moves.

    The probe is ``sequences[0]``. Each perturbation is applied on its own to the batch
    ``sequences`` padded to its longest sequence.

    Args:
        kind: one of :data:`KINDS`.
        sequences: the batch, ``B`` tensors ``(T_i, D)``; ``sequences[0]`` needs ``T_0 >= 2``.
        other_sequences: replacements for ``sequences[1:]``.
        extra_padding: additional zero steps for the padding perturbation. Default: ``4``.

    Returns:
        A :class:`Drift`; zero (to rounding) means the token's output is its own business.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> seqs, others = random_sequences(g, [4, 6]), random_sequences(g, [5])
        >>> sequence_drift("layer", seqs, others).padding
        0.0
    """
    probe = sequences[0]
    if len(probe) < 2:
        raise ValueError(f"expected a probe sequence of at least 2 tokens (got {len(probe)})")
    base = _probe_output(kind, sequences)  # (T_0, D)
    longest = max(len(s) for s in sequences)
    padded = _probe_output(kind, sequences, longest + extra_padding)
    swapped = _probe_output(kind, [probe, *other_sequences])
    changed = probe.clone()
    changed[-1] = changed[-1] + 1.0  # a later token of the probe's own sequence
    future = _probe_output(kind, [changed, *sequences[1:]])
    return Drift(padding=float((padded - base).abs().max()),
                 batch=float((swapped - base).abs().max()),
                 future=float((future[:-1] - base[:-1]).abs().max()))


def padding_drift(kind: str, sequences: Sequence[Tensor], extra_padding: Sequence[int]
                  ) -> np.ndarray:
    """The probe's largest output change as each amount of extra zero padding is added.

    Args:
        kind: one of :data:`KINDS`.
        sequences: the batch; ``sequences[0]`` is the probe.
        extra_padding: numbers of zero steps added beyond the longest sequence.

    Returns:
        ``(P,)`` array of largest absolute changes, one per entry of ``extra_padding``.
    """
    base = _probe_output(kind, sequences)
    longest = max(len(s) for s in sequences)
    return np.array([float((_probe_output(kind, sequences, longest + p) - base).abs().max())
                     for p in extra_padding])


def check_masked_batch_norm(fn, tol: float = 1e-10) -> CheckResult:
    """Grade a reader's masked batch norm ``fn(x, mask, eps)`` (chapter 5's exercise).

    The reference is ``torch.nn.functional.batch_norm`` applied to the real tokens only
    (``x[mask]``, training mode, no affine); the padding positions of the output must be
    exactly 0, and the output must not depend on what the padding holds. Inputs are seeded
    float64 batches of uneven lengths.

    Args:
        fn: ``fn(x, mask, eps) -> Tensor``; ``x`` ``(B, T, D)``, ``mask`` ``(B, T)`` bool.
        tol: largest allowed absolute difference from the reference. Default: ``1e-10``.

    Returns:
        A :class:`~bnlib.audit.CheckResult` whose ``value`` is the largest difference.

    Example:
        >>> mine = lambda x, mask, eps: masked_batch_norm(x, mask, eps=eps)
        >>> check_masked_batch_norm(mine).passed
        True
    """
    g = torch.Generator().manual_seed(123)
    worst, padding_zero = 0.0, True
    for lengths in ([5, 2, 7], [1, 4, 4, 3], [6]):
        x, mask = pad_sequences(random_sequences(g, lengths, d_model=5, offset=2.0))
        garbage = x.masked_fill(~mask.unsqueeze(-1), 7.0)  # padding that is not zero
        try:
            out = fn(garbage, mask, 1e-5)
        except Exception as exc:  # the reader's code: report, do not crash the checker
            return CheckResult("masked_batch_norm", False,
                               f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            return CheckResult("masked_batch_norm", False,
                               f"expected an output of shape {tuple(x.shape)} (got {got})")
        ref = torch.nn.functional.batch_norm(x[mask], None, None, training=True, eps=1e-5)
        worst = max(worst, float((out[mask] - ref).abs().max()))
        padding_zero = padding_zero and not torch.count_nonzero(out[~mask])
    if worst > tol:
        return CheckResult("masked_batch_norm", False,
                           f"differs from F.batch_norm on the real tokens by up to "
                           f"{worst:.1e}", worst)
    if not padding_zero:
        return CheckResult("masked_batch_norm", False,
                           "real tokens right, but padding positions of the output are not 0",
                           worst)
    return CheckResult("masked_batch_norm", True,
                       f"equals F.batch_norm on the real tokens (difference < {tol:.0e}); "
                       "padding is 0", worst)
