"""Recorded runs that the book reads instead of re-running, shipped inside bnlib.

A benchmark takes minutes and its timings depend on the machine, so chapter 9 does not re-run
it: it reads the run recorded here (see ``README.md`` in this folder for what each file holds
and how it was made). The files are package data, so they arrive with ``pip install bnlib``
wherever the book's notebooks run (Colab and Binder included), not only in a clone of the
repository.

Example:
    >>> from bnlib import records
    >>> record = records.load_json("bn_speed-2026-12-01.json")
    >>> record["clock"]
    'cpu'
    >>> records.read_text("bn_speed-2026-12-01.txt").startswith("#")
    True
"""

import json
from importlib import resources

__all__ = ["names", "read_text", "load_json"]


def names() -> list[str]:
    """The recorded files' names (``README.md`` excluded), sorted."""
    folder = resources.files(__name__)
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.name.endswith((".json", ".txt"))
    )


def read_text(name: str) -> str:
    """The text of the recorded file ``name`` (one of :func:`names`).

    Raises:
        FileNotFoundError: ``name`` is not a recorded file; the message lists those there are.
    """
    if name not in names():
        raise FileNotFoundError(
            f"no recorded file {name!r} in bnlib.records; recorded: {', '.join(names())}"
        )
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def load_json(name: str) -> dict:
    """The recorded JSON file ``name``, parsed."""
    return json.loads(read_text(name))
