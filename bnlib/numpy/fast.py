"""Batch normalization at memory speed: blocked NumPy forward and backward passes.

Batch normalization does a handful of flops per value, so its speed is set by how many
times the data crosses the memory bus, not by arithmetic. The teaching version
(:func:`bnlib.numpy.batch_norm_forward`) writes a fresh temporary for every line of the
math: ``x - mu``, its square, ``x_hat``, ``gamma * x_hat``, ``+ beta``. Each temporary is
a full pass over memory and each fresh large array costs page faults on its first touch.
The functions here keep the math and the results but move the least data:

* **Blocked passes.** The input is cut into contiguous blocks of about ``block_bytes``
  (default 256 KiB, a quarter of a core's 1 MiB L2 cache on the machine the book is written
  on). Every temporary lives in one block-sized scratch array that stays in cache (the
  per-channel patterns below add up to four more blocks, which spill from L2 to L3), so main
  memory sees only the reads of ``x`` (and ``dy``) and the writes of the output.
* **Two passes over memory.** The statistics pass reads ``x`` once; the output pass reads
  ``x`` and writes ``y``: ``3S`` bytes for a tensor of ``S`` bytes, the least a two-pass
  method can move. The backward pass reads ``x`` and ``dy`` twice and writes ``dx``
  (``5S``), so forward plus backward moves ``8S``.
* **Per-channel scale and shift.** ``gamma``, ``beta``, ``mu`` and ``1/sigma`` are folded
  into one affine map per channel,

  .. math::

      y_{ic} = a_c x_{ic} + b_c, \\qquad a_c = \\frac{\\gamma_c}{\\sqrt{\\sigma_c^2+\\epsilon}},
      \\qquad b_c = \\beta_c - \\mu_c a_c .

  Each per-channel vector is expanded once per run of channels into a block-shaped
  *pattern* that stays in cache, so every elementwise step is a contiguous in-place NumPy
  operation (NumPy runs those about twice as fast as broadcasting or out-of-place ones).
  Folding rounds ``a_c x`` at the magnitude of ``x``: when ``|mu_c| / sigma_c`` exceeds
  ``FOLD_MAX_OFFSET`` it would lose more than four bits, and the pass subtracts the mean
  first instead.
* **Accurate variance.** The statistics are the shifted two-pass kind: a first, short pass
  over one block per channel gives a shift ``K_c`` (that block's mean); the main pass sums
  ``d = x - K_c`` and ``d^2`` block by block in cache, and the blocks are merged in float64
  with the parallel formula of Chan et al.:

  .. math::

      \\mu_k = K + \\frac{s_{1,k}}{m_k}, \\quad M_{2,k} = s_{2,k} - \\frac{s_{1,k}^2}{m_k},

      \\mu = \\frac{1}{m}\\sum_k m_k \\mu_k,

      M_2 = \\sum_k M_{2,k} + \\sum_k m_k (\\mu_k - \\mu)^2, \\quad \\sigma^2 = \\frac{M_2}{m}.

  The relative error of ``sigma^2`` is about ``(1 + (mu - K)^2 / sigma^2)`` times that of
  a block sum, and for a pilot block of ``p`` of the ``m`` values ``|mu - K| <= sigma
  sqrt(m / p)`` (Cauchy-Schwarz), so the error stays within ``1 + m / p`` block-sum
  errors whatever the data's offset: ``1e4 + N(0, 1)`` in float32 is fine, where
  ``E[x^2] - E[x]^2`` returns nonsense.
* **Reused outputs.** ``out=`` takes a preallocated output, so a training loop that
  passes the same buffer every step never page-faults on a fresh array.

Only float32 and float64 are supported (float16 block sums would overflow).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .batchnorm import check_input

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "FOLD_MAX_OFFSET",
    "FastBatchNormCache",
    "batch_norm_backward_fast",
    "batch_norm_forward_fast",
    "batch_stats_fast",
    "block_layout",
]

DEFAULT_BLOCK_BYTES = 256 * 1024
"""The bytes of input in one block (256 KiB), a quarter of a 1 MiB L2 cache, so a block and
its scratch fit in L2 together; the up to four block-sized patterns spill to L3."""

FOLD_MAX_OFFSET = 16.0
"""Largest ``max_c |mu_c| / sigma_c`` for which the output pass folds the mean into the shift
(losing at most ``log2(16) = 4`` bits); above it the mean is subtracted first."""


def block_layout(shape3: tuple[int, int, int], itemsize: int,
                 block_bytes: int = DEFAULT_BLOCK_BYTES) -> tuple[int, int, int]:
    """The block shape ``(nb, cb, lb)`` for an ``(N, C, L)`` C-contiguous array.

    Whole samples are grouped when a sample fits in a block (``nb`` samples, all channels);
    otherwise a sample is cut into runs of ``cb`` channels, and a single channel longer
    than a block into runs of ``lb`` positions. Every block is one contiguous piece of
    memory.

    Args:
        shape3: ``(N, C, L)``; ``L = 1`` for ``(N, C)`` input.
        itemsize: bytes per element.
        block_bytes: target block size. Default: ``DEFAULT_BLOCK_BYTES`` (256 KiB).

    Example:
        >>> block_layout((4096, 1024, 1), 4), block_layout((64, 64, 3136), 4)
        ((64, 1024, 1), (1, 20, 3136))
    """
    N, C, L = shape3
    elems = max(1, block_bytes // itemsize)
    if C * L <= elems:
        return min(N, elems // (C * L)), C, L
    if L <= elems:
        return 1, elems // L, L
    return 1, 1, elems


def _channel_runs(shape3, layout):
    """Yield ``(c, blocks)``: a slice of channels and the ``(k, n, l)`` blocks that cover it.

    ``k`` numbers the (samples, positions) group a block's statistics belong to; the
    channel run is the outer loop so that its patterns stay in cache for all its blocks.
    """
    N, C, L = shape3
    nb, cb, lb = layout
    groups = [(k, slice(n0, min(n0 + nb, N)), slice(l0, min(l0 + lb, L)))
              for k, (n0, l0) in enumerate((n0, l0) for n0 in range(0, N, nb)
                                           for l0 in range(0, L, lb))]
    for c0 in range(0, C, cb):
        yield slice(c0, min(c0 + cb, C)), groups


def _pattern(v: np.ndarray, nb: int, lb: int, dtype) -> np.ndarray:
    """Expand a per-channel run ``v`` of shape ``(cb,)`` to a flat block pattern.

    Example:
        >>> _pattern(np.array([1.0, 2.0]), 2, 3, np.float64)
        array([1., 1., 1., 2., 2., 2., 1., 1., 1., 2., 2., 2.])
    """
    return np.broadcast_to(np.asarray(v, dtype)[None, :, None],
                           (nb, len(v), lb)).reshape(-1)  # (nb * cb * lb,)  a copy


def _channel_sums(a: np.ndarray, shape: tuple[int, int, int], ones: np.ndarray) -> np.ndarray:
    """Per-channel sums of a flat contiguous block of shape ``(nb, cb, lb)``, float64 ``(cb,)``.

    Matrix-vector products with a vector of ones, which BLAS runs at cache speed:
    ``ones @ (nb, cb)`` when ``lb == 1``, else ``(nb * cb, lb) @ ones`` then a sum over
    samples.
    """
    nb, cb, lb = shape
    if lb == 1:
        return (ones[:nb] @ a.reshape(nb, cb)).astype(np.float64)  # (cb,)
    rows = a.reshape(nb * cb, lb) @ ones[:lb]  # (nb * cb,)
    return rows.reshape(nb, cb).sum(axis=0, dtype=np.float64)  # (cb,)


def _channel_dots(a: np.ndarray, b: np.ndarray, shape, ones: np.ndarray,
                  scratch: np.ndarray) -> np.ndarray:
    """Per-channel sums of ``a * b`` in float64, shape ``(cb,)``; may overwrite ``scratch``
    (which may be ``b``)."""
    nb, cb, lb = shape
    if lb == 1:
        np.multiply(b, a, out=scratch)  # in cache
        return _channel_sums(scratch, shape, ones)
    rows = np.einsum("ij,ij->i", a.reshape(nb * cb, lb), b.reshape(nb * cb, lb))  # (nb*cb,)
    return rows.reshape(nb, cb).sum(axis=0, dtype=np.float64)


class _Blocks:
    """The blocks of an ``(N, C, L)`` array, their scratch space and a vector of ones."""

    def __init__(self, x3: np.ndarray, block_bytes: int):
        self.shape3 = x3.shape
        self.layout = block_layout(x3.shape, x3.itemsize, block_bytes)
        nb, cb, lb = self.layout
        self.scratch = np.empty(nb * cb * lb, dtype=x3.dtype)
        self.ones = np.ones(max(nb, lb), dtype=x3.dtype)
        self.num_groups = -(-x3.shape[0] // nb) * -(-x3.shape[2] // lb)

    def runs(self):
        """Yield ``(c, blocks)`` as :func:`_channel_runs`; each block is
        ``(k, start, stop, shape)``: its group, its span in the flattened array (every block
        is contiguous, so a 1-D slice is the cheapest view of it) and its shape."""
        _, C, L = self.shape3
        for c, groups in _channel_runs(self.shape3, self.layout):
            blocks = []
            for k, n, l in groups:
                shape = (n.stop - n.start, c.stop - c.start, l.stop - l.start)
                start = (n.start * C + c.start) * L + l.start
                blocks.append((k, start, start + shape[0] * shape[1] * shape[2], shape))
            yield c, blocks


def _check_fast(x, num_features) -> np.ndarray:
    x = check_input(x, num_features, training=True)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(
            f"expected a float32 or float64 input for the fast path (got dtype {x.dtype}); "
            "convert it first, e.g. x.astype(np.float32), or use batch_norm_forward")
    return np.ascontiguousarray(x)


def _check_out(out, like: np.ndarray, name: str = "out") -> np.ndarray:
    """A preallocated output must match ``like`` exactly and must not alias it."""
    if out is None:
        return np.empty_like(like)
    if not isinstance(out, np.ndarray) or out.shape != like.shape or out.dtype != like.dtype:
        got = (f"shape {out.shape} and dtype {out.dtype}" if isinstance(out, np.ndarray)
               else type(out).__name__)
        raise ValueError(f"expected {name} of shape {like.shape} and dtype {like.dtype} "
                         f"(got {got})")
    if not out.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous {name} (got strides {out.strides}); "
                         "allocate it with np.empty_like(x)")
    if np.shares_memory(out, like):
        raise ValueError(f"{name} must not share memory with the input, which the "
                         "backward pass reads again")
    return out


def _as_3d(a: np.ndarray) -> np.ndarray:
    """View ``(N, C, *spatial)`` as ``(N, C, L)``; ``L = 1`` for ``(N, C)``."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _stats(x3: np.ndarray, blocks: _Blocks):
    """Merged float64 ``(mean, M2)`` per channel: the shifted two-pass method (module doc)."""
    C = x3.shape[1]
    K = blocks.num_groups
    means = np.zeros((K, C))  # (K, C)  block means
    m2s = np.zeros((K, C))  # (K, C)  block sums of squared deviations
    counts = np.zeros(K)  # (K,)  values of each channel in each group
    nb, _, lb = blocks.layout
    d, ones, xf = blocks.scratch, blocks.ones, x3.reshape(-1)
    for c, run in blocks.runs():
        _, start, stop, shape = run[0]  # pilot: the run's first block gives the shift
        shift = _channel_sums(xf[start:stop], shape, ones) / (shape[0] * shape[2])
        shift = shift.astype(x3.dtype)  # (cb,)
        pattern = _pattern(shift, nb, lb, x3.dtype)  # (nb * cb * lb,)
        for k, start, stop, shape in run:
            db = d[:stop - start]
            np.copyto(db, xf[start:stop])  # the one read of x from memory in this pass
            db -= pattern[:stop - start]  # d = x - K, in place, in cache
            count = shape[0] * shape[2]
            s1 = _channel_sums(db, shape, ones)  # (cb,) float64
            s2 = _channel_dots(db, db, shape, ones, db)  # (cb,) float64
            means[k, c] = shift + s1 / count
            m2s[k, c] = s2 - s1 * s1 / count
            counts[k] = count
    total = counts.sum()
    mean = (counts[:, None] * means).sum(axis=0) / total  # (C,)
    m2 = m2s.sum(axis=0) + (counts[:, None] * (means - mean) ** 2).sum(axis=0)  # (C,)
    return mean, np.maximum(m2, 0.0)


def batch_stats_fast(x, block_bytes: int = DEFAULT_BLOCK_BYTES):
    """Per-channel mean and biased variance in one blocked pass over memory, in float64.

    The shifted two-pass method with block sums merged by Chan et al.'s formula (module
    docstring): accurate for data far from zero, such as ``1e4 + N(0, 1)`` in float32.

    Args:
        x: ``(N, C)`` or ``(N, C, *spatial)``, float32 or float64, more than one value
            per channel.
        block_bytes: bytes per block. Default: ``DEFAULT_BLOCK_BYTES`` (256 KiB).

    Returns:
        ``(mean, var)``, each float64 of shape ``(C,)``.

    Example:
        >>> mean, var = batch_stats_fast(np.array([[1.0, 10.0], [3.0, 30.0]]))
        >>> mean.tolist(), var.tolist()
        ([2.0, 20.0], [1.0, 100.0])
    """
    x = _check_fast(x, None)
    x3 = _as_3d(x)  # (N, C, L)
    mean, m2 = _stats(x3, _Blocks(x3, block_bytes))
    return mean, m2 / (x3.shape[0] * x3.shape[2])


@dataclass
class FastBatchNormCache:
    """What :func:`batch_norm_forward_fast` keeps for :func:`batch_norm_backward_fast`.

    The input is kept by reference, not copied (as ``torch`` keeps it): do not overwrite
    ``x`` between the forward and the backward pass.

    Attributes:
        x: the C-contiguous input, shape ``(N, C, *spatial)``.
        mean, var, inv_std: float64 per-channel statistics, shape ``(C,)``.
        gamma: float64 scale, shape ``(C,)``, or ``None``.
        eps: the epsilon used.
        folded: whether the mean was folded into the shift (see
            ``bnlib.numpy.fast.FOLD_MAX_OFFSET``).
        block_bytes: the block size used.
    """

    x: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray | None
    eps: float
    folded: bool
    block_bytes: int

    @property
    def count(self) -> int:
        """``m``: the number of values each channel's statistics are taken over."""
        return self.x.size // self.x.shape[1]


def batch_norm_forward_fast(x, gamma, beta, eps: float = 1e-5, out: np.ndarray | None = None,
                            block_bytes: int = DEFAULT_BLOCK_BYTES):
    """Batch-normalize ``x`` with its batch statistics, moving ``3S`` bytes for ``S`` of input.

    Same results as :func:`bnlib.numpy.batch_norm_forward` (to a few units in the last place
    of ``x.dtype``), computed in two blocked passes: :func:`batch_stats_fast`, then
    ``y = a_c x + b_c`` with ``a_c = gamma_c / sqrt(var_c + eps)`` and
    ``b_c = beta_c - mu_c a_c`` (or ``y = (x - mu_c) a_c + beta_c`` when folding would lose
    bits, see ``bnlib.numpy.fast.FOLD_MAX_OFFSET``).

    Args:
        x: input, shape ``(N, C)`` or ``(N, C, *spatial)``, float32 or float64.
        gamma: scale, shape ``(C,)``, or ``None`` for no scale (1).
        beta: shift, shape ``(C,)``, or ``None`` for no shift (0).
        eps: added to the variance before the square root. Default: ``1e-5``.
        out: preallocated C-contiguous output of ``x``'s shape and dtype, reused across
            calls to avoid page faults on a fresh array; must not alias ``x``.
            Default: ``None`` (allocate).
        block_bytes: bytes per in-cache block. Default: ``DEFAULT_BLOCK_BYTES`` (256 KiB).

    Returns:
        ``(y, cache)``: the output (``out`` when given) and a :class:`FastBatchNormCache`.

    Shape:
        ``x``, ``y``: ``(N, C, *spatial)``; ``gamma``, ``beta``: ``(C,)``.

    Example:
        >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
        >>> y = np.empty_like(x)
        >>> _ = batch_norm_forward_fast(x, np.ones(2), np.zeros(2), eps=0.0, out=y)
        >>> y
        array([[-1., -1.],
               [ 1.,  1.]])
    """
    x = _check_fast(x, None if gamma is None else np.shape(gamma)[0])
    if beta is not None and np.shape(beta)[0] != x.shape[1]:
        raise ValueError(f"expected input with {np.shape(beta)[0]} channels to match beta "
                         f"(got {x.shape[1]} channels in input of shape {x.shape})")
    y = _check_out(out, x)
    x3, xf, yf = _as_3d(x), x.reshape(-1), y.reshape(-1)  # (N, C, L), flat views
    blocks = _Blocks(x3, block_bytes)
    mean, m2 = _stats(x3, blocks)
    var = m2 / (x3.shape[0] * x3.shape[2])  # (C,) biased
    inv_std = 1.0 / np.sqrt(var + eps)  # (C,) float64
    g64 = None if gamma is None else np.asarray(gamma, dtype=np.float64)
    b64 = np.zeros_like(mean) if beta is None else np.asarray(beta, dtype=np.float64)
    a = inv_std if g64 is None else g64 * inv_std  # (C,)  a_c
    folded = bool(np.all(np.abs(mean) * inv_std <= FOLD_MAX_OFFSET))
    dt = x.dtype
    mu = mean.astype(dt)  # (C,)  x - mu is exact in dt; the rounding of mu moves into b
    b = b64 - mean * a if folded else b64 - (mean - mu) * a  # (C,)  b_c
    nb, _, lb = blocks.layout
    for c, run in blocks.runs():
        a_pat, b_pat = _pattern(a[c], nb, lb, dt), _pattern(b[c], nb, lb, dt)
        mu_pat = None if folded else _pattern(mu[c], nb, lb, dt)
        for _, start, stop, _ in run:
            size = stop - start
            yb = yf[start:stop]
            np.copyto(yb, xf[start:stop])  # then in-place steps, in cache
            if mu_pat is not None:
                yb -= mu_pat[:size]
            yb *= a_pat[:size]
            yb += b_pat[:size]
    cache = FastBatchNormCache(x, mean, var, inv_std, g64, eps, folded, block_bytes)
    return y, cache


def batch_norm_backward_fast(dy, cache: FastBatchNormCache, out: np.ndarray | None = None):
    """Gradients of batch normalization, moving ``5S`` bytes: two blocked passes.

    Pass 1 (reads ``x`` and ``dy``) takes per-channel ``sum(dy)`` and
    ``sum(dy * (x - mu))`` (as ``sum(dy * x) - mu sum(dy)`` when the forward pass folded the
    mean, which loses at most ``log2(1 + FOLD_MAX_OFFSET)`` bits and skips a step); pass 2 (reads them again, writes ``dx``) applies the compact
    form of :func:`bnlib.numpy.batch_norm_backward` as one per-channel affine map of ``dy``
    and ``x``:

    .. math::

        \\frac{\\partial L}{\\partial x_{ic}} = A_c\\, g_{ic} + B_c (x_{ic} - \\mu_c) + D_c,

        A_c = \\gamma_c s_c,\\; B_c = -\\frac{A_c s_c^2}{m}\\sum_j g_{jc}(x_{jc}-\\mu_c),
        \\; D_c = -\\frac{A_c}{m}\\sum_j g_{jc},

    with ``s_c = 1/sqrt(var_c + eps)`` and ``g = dL/dy`` (the mean is folded into ``D_c``
    when the forward pass folded it).

    Args:
        dy: upstream gradient, same shape as the forward input.
        cache: the :class:`FastBatchNormCache` from :func:`batch_norm_forward_fast`.
        out: preallocated output for ``dx`` (same rules as the forward ``out``).
            Default: ``None`` (allocate).

    Returns:
        ``(dx, dgamma, dbeta)``: ``dx`` like ``x``; ``dgamma``, ``dbeta`` of shape ``(C,)``
        in ``x``'s dtype (``dgamma`` is computed even when ``gamma`` was ``None``).

    Example:
        >>> x = np.array([[1.0, 10.0], [3.0, 30.0], [2.0, 20.0]])
        >>> _, cache = batch_norm_forward_fast(x, None, None)
        >>> dx, dgamma, dbeta = batch_norm_backward_fast(np.ones_like(x), cache)
        >>> bool(np.abs(dx).max() < 1e-12), dbeta.tolist()
        (True, [3.0, 3.0])
    """
    x = cache.x
    dy = np.asarray(dy)
    if dy.shape != x.shape:
        raise ValueError(f"expected dy of shape {x.shape} like the forward input "
                         f"(got {dy.shape})")
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    dx = _check_out(out, x, "out")
    if np.shares_memory(dx, dy):
        raise ValueError("out must not share memory with dy, which is read twice")
    x3 = _as_3d(x)  # (N, C, L)
    xf, dyf, dxf = x.reshape(-1), dy.reshape(-1), dx.reshape(-1)  # flat views
    C = x3.shape[1]
    dt = x.dtype
    blocks = _Blocks(x3, cache.block_bytes)
    nb, _, lb = blocks.layout
    d, ones = blocks.scratch, blocks.ones
    mu = cache.mean.astype(dt)  # (C,)  the centre used in cache
    delta = cache.mean - mu  # (C,)  float64 rounding of the centre
    sum_dy, sum_dy_xc = np.zeros(C), np.zeros(C)  # (C,) float64
    for c, run in blocks.runs():  # pass 1: reductions
        mu_pat = None if cache.folded else _pattern(mu[c], nb, lb, dt)
        for _, start, stop, shape in run:
            db, dyb, xb = d[:stop - start], dyf[start:stop], xf[start:stop]
            sum_dy[c] += _channel_sums(dyb, shape, ones)
            if mu_pat is not None:
                np.copyto(db, xb)
                db -= mu_pat[:stop - start]  # x - mu, in cache
                xb = db
            sum_dy_xc[c] += _channel_dots(dyb, xb, shape, ones, db)
    if cache.folded:  # sum(dy * x) - mu sum(dy): loses at most log2(1 + |mu| / sigma) bits
        sum_dy_xc -= mu * sum_dy
    sum_dy_xc -= delta * sum_dy  # centred on the float64 mean
    m = cache.count
    A = cache.inv_std if cache.gamma is None else cache.gamma * cache.inv_std  # (C,)
    B = -A * cache.inv_std ** 2 * sum_dy_xc / m  # (C,)
    D = -A * sum_dy / m - B * delta  # (C,)  for (x - mu) with the dtype centre
    if cache.folded:
        D = D - B * mu  # (C,)  so that dx = A dy + B x + D
    for c, run in blocks.runs():  # pass 2: dx
        a_pat, b_pat, d_pat = (_pattern(v[c], nb, lb, dt) for v in (A, B, D))
        mu_pat = None if cache.folded else _pattern(mu[c], nb, lb, dt)
        for _, start, stop, _ in run:
            size = stop - start
            db, dxb = d[:size], dxf[start:stop]
            np.copyto(db, xf[start:stop])
            if mu_pat is not None:
                db -= mu_pat[:size]
            db *= b_pat[:size]
            db += d_pat[:size]
            np.copyto(dxb, dyf[start:stop])
            dxb *= a_pat[:size]
            dxb += db
    dgamma = (cache.inv_std * sum_dy_xc).astype(dt)
    return dx, dgamma, sum_dy.astype(dt)
