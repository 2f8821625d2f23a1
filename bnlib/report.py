"""Printing results so that a notebook's stored outputs reproduce on other machines."""
from __future__ import annotations

import math

__all__ = ["below", "robust", "outward", "FragileNumberError"]


def below(value: float, tol: float = 1e-12) -> str:
    """A difference as a bound when it is at rounding level, else in scientific notation.

    Rounding-level differences (say ``3.1e-16`` against ``4.4e-16``) vary with the CPU and
    the thread count; printed as ``"< 1e-12"`` they compare equal everywhere, while a real
    discrepancy still shows its size.

    Example:
        >>> below(3e-16), below(2.5e-3)
        ('< 1e-12', '2.5e-03')
    """
    return f"< {tol:.0e}" if value < tol else f"{value:.1e}"


class FragileNumberError(ValueError):
    """A printed number sits so close to a rounding edge that another CPU could print the
    neighbouring value: print fewer digits, or a statistic further from the edge."""


def robust(value: float, fmt: str, rel: float = 1e-3) -> str:
    """``format(value, fmt)``, refused when a relative change of ``rel`` would print otherwise.

    Training runs on other CPUs end within a small relative distance of this machine's
    values; a number printed near a rounding edge (0.245 at two decimals) can then flip its
    last digit there, and the stored output no longer reproduces. The check makes that
    visible where the notebook is executed, instead of on a reader's machine.

    Args:
        value: the number to print.
        fmt: a format specification, e.g. ``".2f"``.
        rel: the relative change the printed text must survive. Default: ``1e-3``.

    Raises:
        FragileNumberError: ``value * (1 - rel)`` or ``value * (1 + rel)`` prints differently.

    Example:
        >>> robust(0.2371, ".2f")
        '0.24'
        >>> robust(0.2450001, ".2f")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        bnlib.report.FragileNumberError: 0.2450001 printed as '.2f' is within 0.1% ...
    """
    text = format(value, fmt)
    low, high = format(value * (1 - rel), fmt), format(value * (1 + rel), fmt)
    if not low == text == high:
        raise FragileNumberError(
            f"{value!r} printed as {fmt!r} is within {rel:.1%} of a rounding edge: "
            f"{min(low, high)!r} or {max(low, high)!r}"
        )
    return text


def outward(low: float, high: float, digits: int = 1, rel: float = 1e-3) -> str:
    """An interval's positive ends rounded outward to ``digits`` significant digits.

    ``outward(2345, 8760)`` is ``"2000 to 9000"``: the printed interval contains the computed
    one. Like :func:`robust`, it refuses ends within ``rel`` of a rounding edge, where a last-bit
    difference on another CPU could move an end by a whole step.

    Raises:
        ValueError: an end is not positive.
        FragileNumberError: an end is within ``rel`` of a rounding edge.

    Example:
        >>> outward(2345.0, 8760.0)
        '2000 to 9000'
        >>> outward(0.0123, 0.0871)
        '0.01 to 0.09'
    """
    if not (low > 0 and high > 0):
        raise ValueError(f"expected positive interval ends (got {low}, {high})")

    def rounded(v: float, up: bool) -> float:
        step = 10.0 ** (math.floor(math.log10(v)) - digits + 1)
        return (math.ceil(v / step) if up else math.floor(v / step)) * step

    ends = []
    for v, up in ((low, False), (high, True)):
        end = rounded(v, up)
        if {rounded(v * (1 - rel), up), rounded(v * (1 + rel), up)} != {end}:
            raise FragileNumberError(
                f"interval end {v!r} is within {rel:.1%} of a rounding edge at {digits} "
                f"significant digit(s)"
            )
        ends.append(f"{float(f'{end:.{digits}g}'):g}")
    return f"{ends[0]} to {ends[1]}"
