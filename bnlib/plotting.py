"""Plot helpers for the book's figures: independent functions that draw on a given ``ax``.

Each function takes a matplotlib ``Axes`` and draws one kind of figure the chapters use more
than once; titles and figure layout stay in the notebook. Colours are consistent per method
through :data:`METHOD_COLORS`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["METHOD_COLORS", "METHOD_LABELS", "plot_band", "plot_percentiles",
           "plot_lr_sweep", "plot_activation_histograms", "plot_roofline"]

#: One colour per normalization method, used by every figure.
METHOD_COLORS = {"none": "tab:red", "batch": "tab:blue", "layer": "tab:green",
                 "group": "tab:purple"}
#: Legend labels per normalization method.
METHOD_LABELS = {"none": "without BN", "batch": "with BN", "layer": "LayerNorm",
                 "group": "GroupNorm"}


def plot_band(x: Sequence[float], runs: np.ndarray, ax, label: str, color: str | None = None,
              linestyle: str = "-", marker: str | None = None):
    """Mean over runs as a line, with the min-max range over runs as a shaded band.

    Args:
        x: ``(T,)`` positions on the x axis.
        runs: ``(S, T)`` one row per run (seed).
        ax: the matplotlib ``Axes``.
        label: legend label; ``" (n=S)"`` is not added, say the seed count in the caption.
        color: line and band colour. Default: matplotlib's next colour.
        linestyle: Default: ``"-"``.
        marker: Default: ``None``.

    Returns:
        The mean line (a ``Line2D``).

    Example:
        >>> import matplotlib.pyplot as plt
        >>> fig, ax = plt.subplots()
        >>> line = plot_band([0, 1, 2], np.array([[0, 1, 2], [0, 2, 4]]), ax, "demo")
        >>> line.get_ydata().tolist()
        [0.0, 1.5, 3.0]
        >>> plt.close(fig)
    """
    runs = np.atleast_2d(np.asarray(runs, dtype=float))
    x = np.asarray(x, dtype=float)
    if runs.shape[1] != len(x):
        raise ValueError(f"expected runs of shape (S, {len(x)}) (got {runs.shape})")
    (line,) = ax.plot(x, runs.mean(axis=0), label=label, color=color, linestyle=linestyle,
                      marker=marker)
    ax.fill_between(x, runs.min(axis=0), runs.max(axis=0), color=line.get_color(), alpha=0.2,
                    linewidth=0)
    return line


def plot_percentiles(steps: Sequence[float], percentiles: np.ndarray, ax, label: str,
                     color: str | None = None):
    """Percentile trajectories as in Ioffe & Szegedy (2015), Figure 1(b, c).

    The middle column is drawn solid, the outer columns thin, with the range between them
    lightly shaded.

    Args:
        steps: ``(T,)`` training steps.
        percentiles: ``(T, 3)`` e.g. the 15th, 50th and 85th percentiles at each step.
        ax: the matplotlib ``Axes``.
        label: legend label of the median line.
        color: Default: matplotlib's next colour.

    Returns:
        The median line.
    """
    p = np.asarray(percentiles, dtype=float)
    if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] != len(steps):
        raise ValueError(f"expected percentiles of shape ({len(steps)}, 3) (got {p.shape})")
    (line,) = ax.plot(steps, p[:, 1], color=color, label=label, linewidth=2)
    for column in (0, 2):
        ax.plot(steps, p[:, column], color=line.get_color(), linewidth=0.8)
    ax.fill_between(steps, p[:, 0], p[:, 2], color=line.get_color(), alpha=0.15, linewidth=0)
    return line


def plot_lr_sweep(result, ax, norms: Sequence[str] = ("none", "batch"),
                  target: float | None = None):
    """Final test accuracy against learning rate (log axis), seed band, divergence marked.

    Args:
        result: a :class:`bnlib.experiments.lr_sweep.SweepResult`.
        ax: the matplotlib ``Axes``.
        norms: which networks to draw. Default: ``("none", "batch")``.
        target: draws the accuracy a stable learning rate must reach. Default: ``None``.

    Diverged runs are drawn as crosses at their accuracy; the legend says so.
    """
    for norm in norms:
        color = METHOD_COLORS.get(norm)
        acc = result.final_test_accuracy[norm]  # (L, S)
        plot_band(result.lrs, acc.T, ax, METHOD_LABELS.get(norm, norm), color=color, marker="o")
        rows, cols = np.nonzero(result.diverged[norm])
        if len(rows):
            ax.scatter(result.lrs[rows], acc[rows, cols], marker="x", s=80, color=color,
                       linewidths=2, zorder=3, label=f"diverged ({METHOD_LABELS.get(norm, norm)})")
    if target is not None:
        ax.axhline(target, color="0.4", linestyle=":", linewidth=1,
                   label=f"target {target:.0%}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("final test accuracy")
    ax.set_ylim(0, 1.02)


def plot_activation_histograms(activations: Sequence[np.ndarray], layers: Sequence[int], ax,
                               bins: np.ndarray, cmap: str = "viridis"):
    """Overlaid step histograms (densities) of several layers' activations.

    Args:
        activations: one array of values per hidden layer, input side first.
        layers: 1-based layer numbers to draw, e.g. ``(1, 5, 10)``.
        ax: the matplotlib ``Axes``.
        bins: histogram bin edges.
        cmap: colormap giving each layer its shade. Default: ``"viridis"``.
    """
    import matplotlib

    colors = matplotlib.colormaps[cmap](np.linspace(0.0, 0.85, len(layers)))
    for color, layer in zip(colors, layers):
        if not 1 <= layer <= len(activations):
            raise ValueError(f"expected layers in 1..{len(activations)} (got {layer})")
        values = np.asarray(activations[layer - 1]).ravel()
        ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.8, color=color,
                label=f"layer {layer}")


def plot_roofline(ax, bandwidth: float, peak: float, points: Sequence[dict],
                  intensity_range: tuple[float, float] | None = None):
    r"""A roofline, :math:`\min(P, I B)` in GFLOP/s against arithmetic intensity ``I`` in
    flop/byte, log-log, with measured points under it.

    The axes span every point and the ridge point :math:`P / B` (no point is cut off).

    Args:
        ax: the matplotlib ``Axes``.
        bandwidth: ``B``, bytes per second.
        peak: ``P``, flops per second.
        points: one dict per point with keys ``intensity`` (flop/byte), ``rate``
            (flop/s), ``label``, and optionally ``color``, ``marker``, ``filled`` (bool,
            default ``True``).
        intensity_range: ``(low, high)`` of the x axis in flop/byte. Default: a decade
            beyond the points and the ridge on each side.

    Returns:
        The roof line (a ``Line2D``).

    Example:
        >>> import matplotlib.pyplot as plt
        >>> fig, ax = plt.subplots()
        >>> roof = plot_roofline(ax, 10e9, 100e9, [dict(intensity=0.5, rate=3e9,
        ...                                             label="demo")])
        >>> float(max(roof.get_ydata()))
        100.0
        >>> plt.close(fig)
    """
    if bandwidth <= 0 or peak <= 0:
        raise ValueError(f"expected bandwidth > 0 and peak > 0 (got {bandwidth}, {peak})")
    ridge = peak / bandwidth
    xs = [p["intensity"] for p in points] + [ridge]
    if intensity_range is None:
        intensity_range = (min(xs) / 10, max(xs) * 10)
    grid = np.logspace(np.log10(intensity_range[0]), np.log10(intensity_range[1]), 200)
    (roof,) = ax.loglog(grid, np.minimum(peak, grid * bandwidth) / 1e9, color="k", lw=2,
                        label="roofline: min(P, I B)")
    ax.axvline(ridge, color="0.6", ls=":", lw=1, label="ridge point P / B")
    for p in points:
        filled = p.get("filled", True)
        color = p.get("color")
        ax.plot(p["intensity"], p["rate"] / 1e9, p.get("marker", "o"), ms=8, color=color,
                markerfacecolor=color if filled else "none", markeredgewidth=1,
                markeredgecolor="k" if filled else color, alpha=0.85,
                label=p["label"], linestyle="none")
    rates = [p["rate"] / 1e9 for p in points] + [peak / 1e9]
    ax.set_xlim(*intensity_range)
    ax.set_ylim(min(rates + [intensity_range[0] * bandwidth / 1e9]) / 2, max(rates) * 2)
    ax.set_xlabel("arithmetic intensity I (FLOP/byte, log scale)")
    ax.set_ylabel("throughput (GFLOP/s, log scale)")
    return roof
