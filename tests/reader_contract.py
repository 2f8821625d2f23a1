"""The reader contract of issue 13, shared by the notebook-contract test and the browser check.

What a reader sees of a chapter is the lesson. The checks, each one test per chapter:

- ``hidden-glue``: no code cell a reader sees calls ``glue()`` (tests/test_notebook_contract.py);
- ``line-length``: every code line a reader sees has at most ``MAX_LINE`` characters
  (tests/test_notebook_contract.py);
- ``install-cell``: the first code cell is the current install cell of ``scripts/install-cell``
  (tests/test_install_cell.py), so the chapter runs unmodified in Colab and Binder;
- ``code-width``: no code block on the built page scrolls sideways at 1280 px (tests/browser);
- ``phone-width``: the built page does not overflow sideways at 390 px (tests/browser);
- ``figures``: every image of the chapter page is a numbered, captioned figure whose alt text
  describes it, not a file name or a hash (tests/browser).

``NOT_YET_COMPLIANT`` lists, while chapters are being reshaped, the (chapter, check) pairs that
still fail. Each listed pair makes its test ``xfail(strict=True)``: it must still fail, so a
chapter that becomes compliant makes the suite fail until its pair is removed here. The set
only ever shrinks; when it is empty, every chapter meets every check.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
NOTEBOOKS = sorted(CHAPTERS.glob("*.ipynb"))
MAX_LINE = 79
# Tags that take a cell's code off the page (hide-* behind a toggle the reader may open).
HIDDEN_TAGS = {"remove-input", "remove-cell", "hide-input", "hide-cell"}
CHECKS = ("hidden-glue", "line-length", "install-cell", "code-width", "phone-width", "figures")

# (chapter, check) pairs that do not pass yet. Empty since a build of main at 2026-12-02 00:30
# (browser check of every English page: code-width, phone-width, figures all pass). A pair
# may only be added with a reason; `python tests/reader_contract.py` lists notebook-level results.
NOT_YET_COMPLIANT: set[tuple[str, str]] = set()  # every chapter meets every check


def reader_check(chapter, check):
    """A pytest param mark for ``chapter``: strict xfail while (chapter, check) is listed."""
    assert check in CHECKS, check
    if (chapter, check) in NOT_YET_COMPLIANT:
        return [pytest.mark.xfail(strict=True, reason=f"NOT_YET_COMPLIANT: {chapter} {check}")]
    return []


def chapter_params(check, chapters=None):
    """``pytest.param`` per chapter (notebook path by default), marked by ``reader_check``."""
    if chapters is None:
        chapters = NOTEBOOKS
    params = []
    for item in chapters:
        stem = Path(item).stem
        params.append(pytest.param(item, id=stem, marks=reader_check(stem, check)))
    return params


def visible_code_cells(notebook):
    """``(index, source)`` of every code cell whose code a reader sees on the page."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    cells = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        metadata = cell.get("metadata", {})
        if HIDDEN_TAGS & set(metadata.get("tags", [])):
            continue
        if (metadata.get("mystnb") or {}).get("remove_code_source"):
            continue
        cells.append((index, "".join(cell["source"])))
    return cells


def load_install_cell():
    """``scripts/install-cell`` as a module (it has no .py suffix)."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader(
        "install_cell", str(ROOT / "scripts" / "install-cell")
    )
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_loader("install_cell", loader)
    )
    loader.exec_module(module)
    return module


GLUE_CALL = re.compile(r"(?<![\w.])(?:\w+\.)*glue\s*\(")


def glue_problems(notebook):
    return [
        f"cell {index} calls glue() where a reader sees it: tag it remove-input "
        f"(or move the glue into a hidden cell)"
        for index, source in visible_code_cells(notebook)
        if any(GLUE_CALL.search(line.split("#")[0]) for line in source.splitlines())
    ]


def line_length_problems(notebook):
    found = []
    for index, source in visible_code_cells(notebook):
        for number, line in enumerate(source.splitlines(), 1):
            if len(line) > MAX_LINE:
                found.append(
                    f"cell {index} line {number} has {len(line)} > {MAX_LINE} "
                    f"characters: {line[:50]!r}..."
                )
    return found


def notebook_check_problems(notebook, check):
    """Problems of one notebook-level check ('hidden-glue', 'line-length', 'install-cell')."""
    if check == "hidden-glue":
        return glue_problems(notebook)
    if check == "line-length":
        return line_length_problems(notebook)
    if check == "install-cell":
        import nbformat

        script = load_install_cell()
        return script.problems(nbformat.read(notebook, as_version=4), script.cell_source())
    raise ValueError(f"{check} is checked on the built book (tests/browser)")


if __name__ == "__main__":
    # `python tests/reader_contract.py`: the notebook-level status of every chapter, and which
    # NOT_YET_COMPLIANT pairs to remove (the browser-level ones need a build and tests/browser).
    for notebook in NOTEBOOKS:
        for check in ("hidden-glue", "line-length", "install-cell"):
            failing = bool(notebook_check_problems(notebook, check))
            listed = (notebook.stem, check) in NOT_YET_COMPLIANT
            note = {
                (True, True): "fails (listed)",
                (False, False): "passes",
                (False, True): "PASSES: remove it from NOT_YET_COMPLIANT",
                (True, False): "FAILS: fix the chapter (or list it)",
            }[failing, listed]
            print(f"{notebook.stem:28} {check:13} {note}")
