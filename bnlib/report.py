"""Printing results so that a notebook's stored outputs reproduce on other machines."""
from __future__ import annotations

__all__ = ["below"]


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
