"""The notebook contract (DESIGN.md section 1): every chapter's code cells were executed and
stored their outputs, with nothing machine-specific in them, and the TOC lists every chapter.
The reader contract (issue 13, tests/reader_contract.py): no code a reader sees calls glue(),
and no line of it is wider than the page's code column (79 characters)."""

import json
import re
from pathlib import Path

import pytest

from reader_contract import chapter_params, glue_problems, line_length_problems

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))


def code_cells(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    return nb, [
        (i, c)
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and "".join(c["source"]).strip()
    ]


def test_there_are_eight_chapters_and_the_toc_lists_every_notebook():
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    for n in range(1, 9):
        assert any(p.name.startswith(f"0{n}_") for p in NOTEBOOKS), f"chapter {n} missing"
    for path in NOTEBOOKS:
        assert f"chapters/{path.stem}" in toc, f"{path.name} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_code_cell_was_executed_in_order(path):
    nb, cells = code_cells(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    counts = [c["execution_count"] for _, c in cells]
    assert None not in counts, (
        f"unexecuted cells: {[i for i, c in cells if c['execution_count'] is None]}"
    )
    assert counts == list(range(1, len(counts) + 1)), "re-run the notebook top to bottom"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_hold_no_machine_paths_and_no_unexpected_errors(path):
    _, cells = code_cells(path)
    for i, cell in cells:
        text = json.dumps(cell["outputs"])
        assert not re.search(r"/(work|root|home|tmp)/", text), f"cell {i} shows a machine path"
        tags = cell.get("metadata", {}).get("tags", [])
        if '"ename"' in text:
            assert "raises-exception" in tags, f"cell {i} stored an error without the tag"
        assert "execution" not in cell.get("metadata", {}), f"cell {i} stores timings"


@pytest.mark.parametrize("path", chapter_params("hidden-glue"))
def test_no_code_a_reader_sees_calls_glue(path):
    problems = glue_problems(path)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", chapter_params("line-length"))
def test_code_a_reader_sees_fits_the_column(path):
    problems = line_length_problems(path)
    assert not problems, f"{path.name}: {len(problems)} lines too long:\n  " + "\n  ".join(
        problems[:20]
    )


def test_the_reader_checks_catch_planted_defects(tmp_path):
    """Visible glue and a visible 80-character line are reported; hidden ones are not."""

    def cell(source, tags=()):
        return {
            "cell_type": "code",
            "execution_count": 1,
            "metadata": {"tags": list(tags)},
            "outputs": [],
            "source": source,
        }

    long_line = "x = " + "1" * 76  # 80 characters
    nb = {
        "cells": [
            cell("from myst_nb import glue\nglue('a', 1, display=False)"),
            cell("myst_nb.glue('b', 2)"),
            cell("glue('c', 3)", ["remove-input"]),
            cell(long_line),
            cell(long_line, ["hide-cell"]),
            cell("x = 1  # glue('d', 4) in a comment is no call"),
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = tmp_path / "planted.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    assert [p.split()[1] for p in glue_problems(path)] == ["0", "1"]
    assert [p.split()[1] for p in line_length_problems(path)] == ["3"]
    assert "80 > 79" in line_length_problems(path)[0]
