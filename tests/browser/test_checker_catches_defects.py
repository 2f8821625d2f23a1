"""The browser check must fail on the defects it exists to catch.

A mirror of the built book (symlinks) gets one page with planted defects (a missing image, a dead link, a
missing anchor, a console error, an uncaught exception, a request to another host, invalid
and undelimited math) and loses its dark-mode stylesheet; the same ``page_problems`` that
checks every real page must report each defect.
"""
import re

import pytest

from conftest import serve
from test_pages import VIEWPORT, LinkChecker, page_problems

DEFECTS = """
<p id="planted-defects">
  <img src="../_images/no-such-figure.png" alt="missing">
  <a href="no-such-page.html">dead link</a>
  <a href="../intro.html#no-such-anchor">missing anchor</a>
  <img src="https://example.com/tracker.png" alt="remote">
  <span class="math notranslate nohighlight">\\(a^b^c\\)</span>
  <span class="math notranslate nohighlight">x^2 without delimiters</span>
</p>
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
}


def chapter_with_math_and_figures(html_dir):
    for page in sorted((html_dir / "chapters").glob("*.html")):
        text = page.read_text(encoding="utf-8")
        if 'class="math' in text and re.search(r'cell_output[^>]*>\s*<img', text):
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
    page = source.read_text(encoding="utf-8").replace("</article>", DEFECTS + "</article>", 1)
    assert DEFECTS in page, "the chapter page has no <article> to plant defects in"
    (site / "chapters" / "planted_defects.html").write_text(page, encoding="utf-8")
    context = browser.new_context(viewport=VIEWPORT, service_workers="block")
    try:
        with serve(site) as url:
            problems = page_problems(context, url, site, LinkChecker(),
                                     "chapters/planted_defects.html")
    finally:
        context.close()
    report = "\n".join(problems)
    missed = [name for name, text in EXPECTED.items() if text not in report]
    assert not missed, f"the browser check missed: {missed}\nit reported:\n{report}"
