"""The browser check must fail on the defects it exists to catch.

A mirror of the built book (symlinks) gets one page with planted defects (a missing image, a dead link, a
missing anchor, a console error, an uncaught exception, a request to another host, invalid
and undelimited math; for the reader contract of issue 13 a code line too wide for the column,
a box wider than a phone, an image outside a figure whose alt text is its hashed file name,
and a figure without a number whose alt text says nothing) and loses its dark-mode
stylesheet; the same ``page_problems`` and ``reader_layout`` that check every real page must
report each defect, and must not report a 79-character code line, which fits.
"""

import re

import pytest

from conftest import serve
from test_pages import PHONE, VIEWPORT, LinkChecker, page_problems, reader_layout

DEFECTS = """
<p id="planted-defects">
  <img src="../_images/no-such-figure.png" alt="missing">
  <a href="no-such-page.html">dead link</a>
  <a href="../intro.html#no-such-anchor">missing anchor</a>
  <img src="https://example.com/tracker.png" alt="remote">
  <span class="math notranslate nohighlight">\\(a^b^c\\)</span>
  <span class="math notranslate nohighlight">x^2 without delimiters</span>
</p>
<div class="highlight"><pre>planted_wide = "{wide}"</pre></div>
<div class="highlight"><pre>{fits}</pre></div>
<div style="width: 900px">planted box wider than a phone</div>
<img src="../_images/{image}" alt="{hashed}.png">
<figure><img src="../_images/{image}" alt="Two curves">
  <figcaption><p>A caption without a number.</p></figcaption></figure>
<script>console.error("planted console error");</script>
<script>plantedUndefinedFunction();</script>
"""
EXPECTED = {
    "missing image": "image did not load: ",
    "HTTP error": "HTTP 404: ",
    "dead link": "broken link (HTTP 404): ",
    "missing anchor": "link to a missing anchor: ",
    "console error": "console error: planted console error",
    "page error": "page error: plantedUndefinedFunction is not defined",
    "outside request": "request leaves the machine (the book must work offline): "
    "https://example.com",
    "malformed math": "MathJax error: Double exponent",
    "unrendered math": "math not rendered: 'x^2 without delimiters'",
    "dimmed figure": "dark mode: figure ",
    "code wider than the column": "code block scrolls sideways at 1280 px",
    "page wider than a phone": "page overflows sideways at 390 px",
    "image outside a figure": "not a captioned figure",
    "alt text a hashed file name": "alt text is a file name or hash: 'ab12",
    "caption without a number": "caption 'A caption without a number.' has no 'Fig. N' number",
    "alt text too short": "alt text 'Two curves' does not say what the image shows",
}
# 79 characters, the limit tests/test_notebook_contract.py sets: must fit the column.
FITS = "fits_79 = '" + "a" * 67 + "'"


def chapter_with_math_and_figures(html_dir):
    for page in sorted((html_dir / "chapters").glob("*.html")):
        text = page.read_text(encoding="utf-8")
        if 'class="math' in text and re.search(
            r"cell_output[^>]*>\s*(<figure[^>]*>\s*)?<img", text
        ):
            return page
    return None


def mirror(source, target, replace=()):
    """Make ``target`` a folder of symlinks to the entries of ``source``, except ``replace``."""
    target.mkdir()
    for entry in source.iterdir():
        if entry.name not in replace:
            (target / entry.name).symlink_to(entry)
    return target


def test_every_planted_defect_is_reported(browser, html_dir, tmp_path):
    source = chapter_with_math_and_figures(html_dir)
    if source is None:
        pytest.skip("no chapter with math and a figure has been built yet")
    site = mirror(html_dir, tmp_path / "site", replace={"_static", "chapters"})
    mirror(html_dir / "_static", site / "_static", replace={"custom.css"})
    mirror(html_dir / "chapters", site / "chapters")
    (site / "_static" / "custom.css").write_text("/* removed by the self-test */\n")
    image = sorted(p.name for p in (html_dir / "_images").glob("*.png"))[0]
    defects = DEFECTS.format(wide="1" * 150, fits=FITS, image=image, hashed="ab12" * 16)
    assert len(FITS) == 79
    page = source.read_text(encoding="utf-8").replace("</article>", defects + "</article>", 1)
    assert defects in page, "the chapter page has no <article> to plant defects in"
    (site / "chapters" / "planted_defects.html").write_text(page, encoding="utf-8")
    context = browser.new_context(viewport=VIEWPORT, service_workers="block")
    phone = browser.new_context(
        viewport=PHONE, service_workers="block", is_mobile=True, has_touch=True
    )
    try:
        with serve(site) as url:
            path = "chapters/planted_defects.html"
            problems = page_problems(context, url, site, LinkChecker(), path)
            for found in reader_layout(context, phone, url, path).values():
                problems += found
    finally:
        context.close()
        phone.close()
    report = "\n".join(problems)
    assert "fits_79" not in report, f"a 79-character line was reported:\n{report}"
    missed = [name for name, text in EXPECTED.items() if text not in report]
    assert not missed, f"the browser check missed: {missed}\nit reported:\n{report}"
