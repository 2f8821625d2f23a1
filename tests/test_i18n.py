"""The Chinese edition's catalogs (locales/zh_CN/LC_MESSAGES): one per page, each translation
carrying its English message's glue keys, references, citations, math, code and links, and
same-page glue keys written in the cross-document form that survives translation."""

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "_ext"))
import bnbook_i18n  # noqa: E402

CATALOGS = ROOT / "locales" / "zh_CN" / "LC_MESSAGES"


def toc_pages():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries:
            pages.append(entry["file"])
            walk(entry.get("sections", []))

    for part in toc["parts"]:
        walk(part["chapters"])
    return pages


def write_po(path, entries):
    lines = ['msgid ""', 'msgstr ""', '"Content-Type: text/plain; charset=utf-8\\n"', ""]
    for english, chinese, fuzzy in entries:
        lines += (["#, fuzzy"] if fuzzy else []) + [
            f'msgid "{english}"',
            f'msgstr "{chinese}"',
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def test_lint_finds_every_kind_of_lost_markup(tmp_path):
    po = tmp_path / "locales" / "zh_CN" / "LC_MESSAGES" / "chapters" / "01_background.po"
    g = "{glue:text}`ch1_ratio:.1f`"
    write_po(
        po,
        [
            (
                f"BN is {g} times faster.",
                "批量归一化快 {glue:text}`01_background.ipynb::ch1_ratio:.1f` 倍。",
                False,
            ),
            (f"BN is {g} times faster.x", "批量归一化快很多倍。", False),  # glue lost
            (f"BN is {g} times faster.y", f"批量归一化快 {g} 倍。", False),  # same-page key
            ("Mean $\\\\mu_B$ of the batch.", "批次的均值 $\\\\mu$。", False),  # math changed
            (
                "See {numref}`fig-a` and {cite}`ioffe2015batch`.",
                "见 {numref}`fig-b`。",
                False,
            ),  # refs
            ("Call `bn.eval()` first.", "先调用 `eval()`。", False),  # code
            ("Read [the paper](https://arxiv.org/abs/1502.03167).", "阅读论文。", False),  # link
            (f"Stale {g}.", "过时的译文。", True),  # fuzzy: skipped
        ],
    )
    problems = bnbook_i18n.lint(tmp_path)
    assert not any("times faster.'" in p for p in problems), problems  # the correct one passes
    for needle in (
        "glue differs",
        "document",
        "math differs",
        "role differs",
        "code differs",
        "link differs",
    ):
        assert any(needle in p for p in problems), f"lint missed: {needle}\n{problems}"
    assert not any("Stale" in p for p in problems)


def test_every_translation_carries_its_markup():
    problems = bnbook_i18n.lint(ROOT)
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize("page", toc_pages())
def test_every_page_has_a_catalog(page):
    assert (CATALOGS / f"{page}.po").exists(), f"run scripts/i18n update: no catalog for {page}"
