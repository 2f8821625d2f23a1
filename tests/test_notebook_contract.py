"""The notebook contract (DESIGN.md section 1): every chapter's code cells were executed and
stored their outputs, with nothing machine-specific in them, and the TOC lists every chapter."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))


def code_cells(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    return nb, [(i, c) for i, c in enumerate(nb["cells"])
                if c["cell_type"] == "code" and "".join(c["source"]).strip()]


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
    assert None not in counts, f"unexecuted cells: {[i for i, c in cells if c['execution_count'] is None]}"
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
