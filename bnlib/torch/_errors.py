"""The exceptions bnlib.torch raises where ``torch.nn`` raises.

PyTorch raises ``ValueError`` for some bad inputs (wrong rank, one value per channel) and
``RuntimeError`` (or its subclass ``NotImplementedError``) for others (size mismatches, mixed
dtypes, integer input). bnlib raises one class that derives from all of them, with a message
that says what was expected, what was got and how to fix it, so that an ``except`` clause
written for torch catches bnlib's error too.
"""
from __future__ import annotations

__all__ = ["NormError", "NormIndexError", "NormTypeError"]


class NormError(ValueError, RuntimeError):
    """A bad argument or input: caught by ``except ValueError`` and ``except RuntimeError``.

    Example:
        >>> try:
        ...     raise NormError("expected 4D input (got 3D input)")
        ... except RuntimeError as e:
        ...     print(type(e).__name__, isinstance(e, ValueError))
        NormError True
    """


class NormTypeError(NormError, NotImplementedError):
    """An input dtype torch has no kernel for (integer or boolean input): torch raises
    ``NotImplementedError`` or ``RuntimeError``; this class is both, and a ``ValueError``.

    Example:
        >>> issubclass(NormTypeError, (NotImplementedError, ValueError))
        True
    """


class NormIndexError(NormError, IndexError):
    """An input with too few dimensions where torch indexes a dimension it lacks and raises
    ``IndexError`` ("Dimension out of range"); this class is that, and a :class:`NormError`.

    Example:
        >>> issubclass(NormIndexError, (IndexError, ValueError, RuntimeError))
        True
    """
