"""Two tables computed when the book is built, so that no one types their numbers by hand.

``{reading-times}`` (front page): each chapter's reading time, estimated from its notebook's
word counts (prose at ``PROSE_WPM`` words per minute, code a reader sees at ``CODE_WPM``),
and which reading paths include it, with each path's total. The directive's content names
the paths, one per line, as ``name: 01 02 04``: a chapter number takes that chapter with its
sections (``07`` is 07, 07a, 07b, ...), a lettered one (``07b``) that section alone.

``{verification-table}`` (appendix "How this book is verified"): per chapter, what the last
test command (``scripts/test``) executed and compared: the cells nbval executed and their
result, the execution time of the native run and of the run with another CPU's kernels, read
from nbval's JUnit reports ``_build/nbval.xml`` and ``_build/nbval-other-cpu.xml`` (or the
files named by ``BNBOOK_NBVAL_XML`` and ``BNBOOK_NBVAL_OTHER_CPU_XML``), and, from the stored
notebook, how many text outputs and glued values nbval compares and how many figures it
does not (it compares text, not images). Without a report it says so and how to make one.
"""

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml
from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx import addnodes
from sphinx.util import logging

logger = logging.getLogger(__name__)
PROSE_WPM = 200  # words per minute, a common estimate for technical prose
CODE_WPM = 100  # code is read about half as fast
HIDDEN_TAGS = {"remove-input", "remove-cell", "hide-input", "hide-cell"}
TEXT_MIMES = ("text/plain", "text/html", "text/latex", "image/svg+xml")


def _chapters(srcdir):
    """Notebook chapters in table-of-contents order: [(docname, path)]."""
    toc = yaml.safe_load((srcdir / "_toc.yml").read_text(encoding="utf-8"))
    files = []

    def walk(entry):
        if isinstance(entry, dict):
            if "file" in entry:
                files.append(entry["file"])
            for value in entry.values():
                walk(value)
        elif isinstance(entry, list):
            for item in entry:
                walk(item)

    walk(toc)
    found = []
    for name in files:
        path = srcdir / f"{name}.ipynb"
        if name.startswith("chapters/") and path.is_file():
            found.append((name, path))
    return found


def _notebook(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _words(text):
    return len(re.findall(r"\S+", text))


def reading_minutes(path):
    """(minutes, prose words, code words) of the notebook at ``path``."""
    prose = code = 0
    for cell in _notebook(path)["cells"]:
        source = "".join(cell["source"])
        tags = set(cell.get("metadata", {}).get("tags", []))
        if cell["cell_type"] == "markdown":
            prose += _words(source)
        elif cell["cell_type"] == "code" and not tags & HIDDEN_TAGS:
            code += _words(source)
    return prose / PROSE_WPM + code / CODE_WPM, prose, code


def _xref(docname, refdoc):
    node = addnodes.pending_xref(
        "",
        nodes.inline("", docname),
        refdomain="std",
        reftype="doc",
        reftarget="/" + docname,
        refdoc=refdoc,
        refexplicit=False,
        refwarn=True,
    )
    return node


def _table(header, rows, widths=None):
    table = nodes.table(classes=["bnbook-table"])
    group = nodes.tgroup(cols=len(header))
    table += group
    for width in widths or [1] * len(header):
        group += nodes.colspec(colwidth=width)

    def row(cells):
        tr = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            if isinstance(cell, nodes.Node):
                paragraph = nodes.paragraph("", "", cell)
            else:
                paragraph = nodes.paragraph("", str(cell))
            paragraph["translatable"] = False  # generated, build-dependent values
            entry += paragraph
            tr += entry
        return tr

    head = nodes.thead()
    head += row(header)
    group += head
    body = nodes.tbody()
    for cells in rows:
        body += row(cells)
    group += body
    return table


def _round5(minutes):
    return max(5, int(round(minutes / 5.0)) * 5)


def _in_path(stem, prefixes):
    """``07`` takes 07_x and its sections 07a_x, 07b_x; ``07b`` takes 07b_x only."""
    for prefix in prefixes:
        pattern = re.escape(prefix) + (r"[a-z]?_" if prefix.isdigit() else "_")
        if re.match(pattern, stem):
            return True
    return False


class ReadingTimes(Directive):
    has_content = True

    def run(self):
        env = self.state.document.settings.env
        srcdir = Path(env.srcdir)
        paths = []
        for line in self.content:
            if line.strip():
                name, _, prefixes = line.partition(":")
                paths.append((name.strip(), prefixes.split()))
        chapters = _chapters(srcdir)
        rows, totals = [], [0] * len(paths)
        for prefix_list in (p for _, p in paths):
            for prefix in prefix_list:
                if not any(_in_path(Path(doc).name, [prefix]) for doc, _ in chapters):
                    logger.warning(
                        f"reading-times: no chapter notebook {prefix}_* in _toc.yml",
                        location=self.get_location(),
                    )
        for docname, path in chapters:
            env.note_dependency(str(path))
            minutes = _round5(reading_minutes(path)[0])
            marks = []
            for i, (_, prefixes) in enumerate(paths):
                if _in_path(Path(docname).name, prefixes):
                    marks.append("\u2713")
                    totals[i] += minutes
                else:
                    marks.append("")
            rows.append([_xref(docname, env.docname), f"{minutes} min", *marks])
        rows.append(
            [
                nodes.strong("", "Total"),
                "",
                *[f"{total / 60:.1f} h" if total >= 60 else f"{total} min" for total in totals],
            ]
        )
        header = ["Chapter", "Reading time", *[name for name, _ in paths]]
        return [_table(header, rows, [6, 2] + [2] * len(paths))]


def _nbval_report(srcdir, variable, default):
    """{notebook path: (cells, failures, skipped, seconds)} from a JUnit report, or None."""
    path = Path(os.environ.get(variable) or srcdir / "_build" / default)
    if not path.is_file():
        return None, path
    results = {}
    for case in ET.parse(path).iter("testcase"):
        classname = case.get("classname", "")
        if not classname.endswith(".ipynb"):
            continue
        stem = classname[: -len(".ipynb")].replace(".", "/") + ".ipynb"
        cells, failed, skipped, seconds = results.get(stem, (0, 0, 0, 0.0))
        failed += any(child.tag in ("failure", "error") for child in case)
        skipped += any(child.tag == "skipped" for child in case)
        results[stem] = (cells + 1, failed, skipped, seconds + float(case.get("time", 0)))
    return results, path


def compared_outputs(path):
    """(text outputs compared, glued values compared, figures not compared) of a notebook.

    Outputs of cells that nbval is told to skip or ignore are not counted as compared."""
    text = glued = figures = 0
    for cell in _notebook(path)["cells"]:
        if cell["cell_type"] != "code":
            continue
        tags = set(cell.get("metadata", {}).get("tags", []))
        source = "".join(cell["source"])
        ignored = (
            {"nbval-ignore-output", "nbval-skip"} & tags
            or "NBVAL_IGNORE_OUTPUT" in source
            or "NBVAL_SKIP" in source
        )
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}) or "image/jpeg" in output.get("data", {}):
                figures += 1
            if ignored:
                continue
            data = output.get("data", {})
            if "scrapbook" in output.get("metadata", {}):
                glued += 1
            elif output.get("output_type") == "stream" or any(m in data for m in TEXT_MIMES):
                text += 1
    return text, glued, figures


class VerificationTable(Directive):
    def run(self):
        env = self.state.document.settings.env
        srcdir = Path(env.srcdir)
        native, native_path = _nbval_report(srcdir, "BNBOOK_NBVAL_XML", "nbval.xml")
        other, other_path = _nbval_report(
            srcdir, "BNBOOK_NBVAL_OTHER_CPU_XML", "nbval-other-cpu.xml"
        )
        for report in (native_path, other_path):
            if report.is_file():
                env.note_dependency(str(report))
        output = []
        if native is None:
            note = nodes.paragraph(
                "",
                "The execution columns are filled in by the test command: this build "
                "found no nbval report (scripts/test writes _build/nbval.xml and "
                "_build/nbval-other-cpu.xml before it builds the book).",
            )
            # Generated text depends on the build (a report or none): not a message of the
            # Chinese catalogs, whose check must not depend on whether nbval ran first.
            note["translatable"] = False
            output.append(note)

        def run_cells(report, stem):
            if report is None or stem not in report:
                return "not run", "\u2013"
            cells, failed, skipped, seconds = report[stem]
            verdict = f"{cells - failed - skipped} passed"
            if failed:
                verdict += f", {failed} FAILED"
            if skipped:
                verdict += f", {skipped} skipped"
            return f"{cells} ({verdict})", f"{seconds:.0f} s"

        rows = []
        for docname, path in _chapters(srcdir):
            env.note_dependency(str(path))
            stem = f"{docname}.ipynb"
            cells, native_time = run_cells(native, stem)
            _, other_time = run_cells(other, stem)
            text, glued, figures = compared_outputs(path)
            rows.append(
                [_xref(docname, env.docname), cells, native_time, other_time, text, glued, figures]
            )
        header = [
            "Chapter",
            "Cells executed (result)",
            "Time, native",
            "Time, other CPU",
            "Text outputs compared",
            "Glued values compared",
            "Figures (not compared)",
        ]
        output.append(_table(header, rows, [5, 4, 2, 2, 2, 2, 2]))
        return output


def setup(app):
    app.add_directive("reading-times", ReadingTimes)
    app.add_directive("verification-table", VerificationTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
