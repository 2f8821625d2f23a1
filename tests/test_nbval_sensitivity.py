"""nbval still fails when a reported result changes.

The sanitizer (tests/nbval_sanitize.cfg) makes stored outputs comparable across CPUs; it must
not make them so coarse that a changed conclusion passes. Two checks:

* every glued number of every chapter, changed by one unit of its last reported digit (one
  point for an accuracy printed as 0.93), still differs after sanitizing;
* end to end, nbval fails on a notebook whose stored glued accuracy is one point off the value
  its code computes, and passes when the stored value is right.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from test_determinism import sanitizers

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))
GLUE_MIME = "application/papermill.record/text/plain"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def sanitize(text):
    for regex, replacement in sanitizers():
        text = regex.sub(replacement, text)
    return text


def glued_numbers(path):
    """(key, stored text) of every glued value of ``path`` that is a plain number."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get(GLUE_MIME)
            if isinstance(text, list):
                text = "".join(text)
            if text is not None and NUMBER.fullmatch(text.strip().strip("'\"")):
                yield output["metadata"]["scrapbook"]["name"], text.strip().strip("'\"")


def bump_last_digit(number, max_decimals=None):
    """``number`` with one unit added to its last written digit (0.93 -> 0.94, 1e-08 -> 2e-08),
    or to its decimal ``max_decimals`` when it has more decimals than that."""
    mantissa, exponent = (
        re.split("[eE]", number) + [""]
        if re.search("[eE]", number) is None
        else re.split("[eE]", number)
    )
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    if max_decimals is not None:
        decimals = min(decimals, max_decimals)
    step = 10.0**-decimals * (-1 if mantissa.startswith("-") else 1)
    bumped = f"{float(mantissa) + step:.{decimals}f}"
    return bumped + (f"e{exponent}" if exponent else "")


def test_bump_last_digit():
    assert bump_last_digit("0.93") == "0.94"
    assert bump_last_digit("12") == "13"
    assert bump_last_digit("-0.5") == "-0.6"
    assert bump_last_digit("1.5e-08") == "1.6e-08"
    assert bump_last_digit("0.123456789", max_decimals=6) == "0.123458"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_glued_number_changed_in_a_reported_digit_is_still_detected(path):
    numbers = list(glued_numbers(path))
    for key, text in numbers:
        # The sanitizer compares six decimals (other CPUs change the digits after them): a
        # change in any digit up to the sixth decimal must survive it.
        changed = bump_last_digit(text, max_decimals=6)
        assert sanitize(text) != sanitize(changed), (
            f"{path.name}: glued {key}={text} and {changed} look the same to nbval"
        )


def make_notebook(stored_value):
    code = "from myst_nb import glue\naccuracy = round(0.50 + 0.43, 2)\nglue('acc', accuracy, display=False)"
    cell = nbformat.v4.new_code_cell(
        code,
        execution_count=1,
        outputs=[
            nbformat.v4.new_output(
                "display_data",
                data={GLUE_MIME: stored_value},
                metadata={
                    "scrapbook": {"name": "acc", "mime_prefix": "application/papermill.record/"}
                },
            )
        ],
    )
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def run_nbval(path):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:xdist",
            "-p",
            "no:cacheprovider",
            "--nbval",
            "--nbval-current-env",
            "--nbval-sanitize-with",
            str(ROOT / "tests" / "nbval_sanitize.cfg"),
            "--rootdir",
            str(path.parent),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=path.parent,
    )


def test_nbval_fails_when_a_glued_accuracy_is_one_point_off(tmp_path):
    right, wrong = tmp_path / "right.ipynb", tmp_path / "wrong.ipynb"
    nbformat.write(make_notebook("0.93"), right)
    nbformat.write(make_notebook("0.94"), wrong)
    passed, failed = run_nbval(right), run_nbval(wrong)
    assert passed.returncode == 0, passed.stdout[-2000:]
    assert failed.returncode == 1 and "0.94" in failed.stdout, failed.stdout[-2000:]
