"""The Chinese edition: one source, two languages (Sphinx's gettext internationalization).

* ``BNBOOK_LANGUAGE=zh_CN jupyter-book build ...`` builds the book in Simplified Chinese from
  the message catalogs in ``locales/zh_CN/LC_MESSAGES/`` (``scripts/book`` builds both
  editions; the Chinese one lands in ``_build/html/zh/``). Sphinx reads ``language`` before it
  loads the catalogs, so setting it when the configuration is read is enough, and the book has
  one ``_config.yml`` for both editions.
* Every page links to its twin in the other edition (sphinx-book-theme has no language
  switcher), at the top of the article, when ``BNBOOK_TWIN_LINKS=1`` says both editions are
  built (``scripts/book`` sets it).
* The API reference's docstrings stay English in both editions (one source: the code).
* Each Chinese page says how much of its text is translated: untranslated and stale ("fuzzy")
  messages show the current English, so a reader is never shown an outdated translation.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

__all__ = ["catalog_progress", "check", "lint", "markup", "setup", "status"]

EDITIONS = {"en": "English", "zh_CN": "中文"}
ZH_DIR = "zh"  # the Chinese edition's folder inside the English site


def _language(app) -> str:
    return app.config.language or "en"


def _config_inited(app, config) -> None:
    language = os.environ.get("BNBOOK_LANGUAGE")
    if language:
        if language not in EDITIONS:
            raise ValueError(
                f"BNBOOK_LANGUAGE must be one of {sorted(EDITIONS)} (got {language!r})"
            )
        config.language = language
        title = config.bnbook_titles.get(language)
        if title:
            config.html_title = title
            config.project = title


def catalog_progress(path: Path) -> tuple[int, int]:
    """(translated, total) messages of a ``.po`` file; fuzzy and empty translations do not count.

    Example:
        >>> import tempfile
        >>> po = Path(tempfile.mkdtemp()) / "page.po"
        >>> _ = po.write_text('msgid ""\\nmsgstr ""\\n\\nmsgid "a"\\nmsgstr "甲"\\n\\n'
        ...                   '#, fuzzy\\nmsgid "b"\\nmsgstr "乙"\\n\\nmsgid "c"\\nmsgstr ""\\n',
        ...                   encoding="utf-8")
        >>> catalog_progress(po)
        (1, 3)
    """
    from babel.messages.pofile import read_po

    with path.open("rb") as f:
        catalog = read_po(f)
    messages = [m for m in catalog if m.id]
    done = sum(1 for m in messages if m.string and not m.fuzzy)
    return done, len(messages)


_ROLE = re.compile(r"\{([a-z]+(?::[a-z]+)?)\}`([^`]*)`")
_MATH = re.compile(r"\$\$.+?\$\$|\$[^$]+\$", re.S)
_CODE = re.compile(r"(?<![}`])`([^`]+)`")
_LINK = re.compile(r"\]\(([^)\s]+)\)|<(https?://[^>]+)>|(https?://[^\s)>\]]+)")


def markup(text: str, page: str) -> dict[str, list[str]]:
    """What a translation must carry over unchanged from its English message: glue keys (a
    same-page key and its cross-document form count as one), role targets (``{ref}``,
    ``{numref}``, ``{term}``, ``{cite}``, ...), math, inline code and link targets; plus
    ``local_glue``, the same-page glue keys written without a document, which vanish from a
    translated paragraph (myst-nb renders it without the page's glue data).

    Example:
        >>> m = markup("BN {glue:text}`01_background.ipynb::ch1_ratio:.1f`x, see {numref}`Fig. %s <fig-a>`",
        ...            "chapters/01_background")
        >>> m["glue"], m["role"], m["local_glue"]
        (['glue:text ch1_ratio:.1f'], ['numref fig-a'], [])
        >>> markup("{glue:text}`01_background.ipynb::ch1_verdict`", "chapters/01_background")[
        ...     "unformatted_glue"]
        ['01_background.ipynb::ch1_verdict']
    """
    own = page.rsplit("/", 1)[-1] + ".ipynb::"
    found: dict[str, list[str]] = {
        "glue": [],
        "role": [],
        "math": [],
        "code": [],
        "link": [],
        "local_glue": [],
        "unformatted_glue": [],
    }
    rest = _MATH.sub(lambda m: found["math"].append(" ".join(m.group(0).split())) or " ", text)
    for role, body in _ROLE.findall(rest):
        target = (
            body.rsplit("<", 1)[1].rstrip(">").strip()
            if body.rstrip().endswith(">")
            else body.strip()
        )
        if role.startswith("glue"):
            if "::" not in target:
                found["local_glue"].append(target)
            elif role == "glue:text" and ":" not in target.split("::", 1)[1]:
                # myst-nb splits the format at the last colon: "doc::key" would lose its key.
                found["unformatted_glue"].append(target)
            target = target[len(own) :] if target.startswith(own) else target
            if role == "glue:text" and target.endswith(":s"):
                target = target[:-2]  # ":s" is glue:text's default format
            found["glue"].append(f"{role} {target}")
        elif role.startswith("cite"):
            found["role"].append(f"cite {','.join(sorted(k.strip() for k in target.split(',')))}")
        else:
            found["role"].append(f"{role} {target}")
    rest = _ROLE.sub(" ", rest)
    found["code"] = _CODE.findall(rest)
    found["link"] = [next(g for g in groups if g) for groups in _LINK.findall(rest)]
    return {k: sorted(v) for k, v in found.items()}


def lint(root: Path = Path(".")) -> list[str]:
    """Translated messages that lost or changed markup their English message has (glue keys,
    references, citations, math, code, links), or that use a same-page glue key without its
    document. An empty list means every translation carries its numbers and links."""
    from babel.messages.pofile import read_po

    problems = []
    for page, po in _catalogs(root).items():
        with po.open("rb") as f:
            catalog = read_po(f)
        for message in catalog:
            if not message.id or not message.string or message.fuzzy:
                continue
            english, chinese = markup(message.id, page), markup(message.string, page)
            if chinese["local_glue"]:
                problems.append(
                    f"{page}: write the glue key with its document, "
                    f"{page.rsplit('/', 1)[-1]}.ipynb::{chinese['local_glue'][0]} "
                    f"(a same-page key vanishes from a translation): {message.id[:60]!r}"
                )
            if chinese["unformatted_glue"]:
                problems.append(
                    f"{page}: add a format to {chinese['unformatted_glue'][0]} (e.g. :s): "
                    f"myst-nb reads 'doc::key' without one as a format and the number "
                    f"vanishes: {message.id[:60]!r}"
                )
            for kind in ("glue", "role", "math", "code", "link"):
                if english[kind] != chinese[kind]:
                    problems.append(
                        f"{page}: {kind} differs: English {english[kind]} "
                        f"translation {chinese[kind]} in {message.id[:60]!r}"
                    )
    return problems


def _keep_api_docs_in_english(app, doctree) -> None:
    """Docstrings rendered by autodoc (the API reference: module, class and function
    docstrings) are code documentation with one source, the code: they are not extracted for
    translation and stay English in both editions. The API page's own prose is translated like
    any other page."""
    from docutils import nodes
    from sphinx import addnodes

    for desc in doctree.findall(addnodes.desc):
        for node in desc.findall(nodes.TextElement):
            node["translatable"] = False
    for node in doctree.findall(nodes.TextElement):
        if ":docstring of " in (node.source or ""):
            node["translatable"] = False


def _toc_caption_transform():
    """A transform that translates the table of contents' part captions ("The book",
    "Appendices"): sphinx-external-toc inserts the toctrees after Sphinx has translated the
    page, so their captions would stay English. They are messages of the root page's catalog."""
    from pathlib import Path as _Path

    from sphinx import addnodes, locale
    from sphinx.transforms import SphinxTransform
    from sphinx.util.i18n import docname_to_domain

    class TranslateTocCaptions(SphinxTransform):
        default_priority = 990  # after sphinx-external-toc's InsertToctrees

        def apply(self, **kwargs) -> None:
            if (self.config.language or "en") == "en":
                return
            domain = docname_to_domain(self.env.docname, self.config.gettext_compact)
            dirs = [str(_Path(self.env.srcdir) / d) for d in self.config.locale_dirs]
            catalog, found = locale.init(dirs, self.config.language, domain)
            if not found:
                return
            for toctree in self.document.findall(addnodes.toctree):
                caption = toctree.get("caption")
                if caption and catalog.gettext(caption) != caption:
                    toctree["caption"] = catalog.gettext(caption)

    return TranslateTocCaptions


def _twin_link(app, pagename: str) -> str:
    up = "../" * pagename.count("/")
    if _language(app) == "en":
        href, label, lang = f"{up}{ZH_DIR}/{pagename}.html", EDITIONS["zh_CN"], "zh-CN"
    else:
        href, label, lang = f"{up}../{pagename}.html", EDITIONS["en"], "en"
    return (
        f'<a class="bnbook-twin" href="{html.escape(href)}" hreflang="{lang}" '
        f'lang="{lang}">{label}</a>'
    )


def _progress_note(app, pagename: str) -> str:
    if _language(app) == "en":
        return ""
    po = Path(app.srcdir) / "locales" / _language(app) / "LC_MESSAGES" / f"{pagename}.po"
    done, total = catalog_progress(po) if po.exists() else (0, 0)
    if total and done == total:
        return '<span class="bnbook-progress">本页已全部译成中文。</span>'
    return (
        f'<span class="bnbook-progress">本页 {total} 段文字中已译 {done} 段；'
        f"其余显示英文原文（英文更新后尚未重译的段落也显示英文）。</span>"
    )


def _page_context(app, pagename, templatename, context, doctree) -> None:
    if doctree is None or "body" not in context:
        return
    # scripts/book builds both editions and sets BNBOOK_TWIN_LINKS=1; a plain build of one
    # edition has no twin to link to.
    twin = _twin_link(app, pagename) if os.environ.get("BNBOOK_TWIN_LINKS") == "1" else ""
    note = _progress_note(app, pagename)
    if not (twin or note):
        return
    banner = (
        f'<div class="bnbook-language" role="navigation" aria-label="language">{twin}{note}</div>'
    )
    context["body"] = banner + context["body"]


def _catalogs(root: Path = Path(".")) -> dict[str, Path]:
    base = root / "locales" / "zh_CN" / "LC_MESSAGES"
    return {p.relative_to(base).with_suffix("").as_posix(): p for p in sorted(base.rglob("*.po"))}


def check(pot_dir: Path, root: Path = Path(".")) -> list[str]:
    """Problems that make the catalogs out of date with the English text extracted into
    ``pot_dir`` (one ``.pot`` per page): a page without a catalog, a paragraph the catalog lacks,
    an entry for a paragraph that no longer exists. ``scripts/i18n update`` fixes all three."""
    from babel.messages.pofile import read_po

    problems, catalogs = [], _catalogs(root)
    templates = {
        p.relative_to(pot_dir).with_suffix("").as_posix(): p
        for p in sorted(Path(pot_dir).rglob("*.pot"))
    }
    for page, pot in templates.items():
        if page not in catalogs:
            problems.append(f"{page}: no catalog locales/zh_CN/LC_MESSAGES/{page}.po")
            continue
        with pot.open("rb") as f:
            wanted = {m.id for m in read_po(f) if m.id}
        with catalogs[page].open("rb") as f:
            have = {m.id for m in read_po(f) if m.id}
        for missing in sorted(wanted - have)[:3]:
            problems.append(f"{page}: English text not in the catalog: {missing[:70]!r}")
        for stale in sorted(have - wanted)[:3]:
            problems.append(f"{page}: catalog entry for text that is gone: {stale[:70]!r}")
    for page in sorted(set(catalogs) - set(templates)):
        problems.append(f"{page}: catalog for a page that does not exist")
    return problems


def status(root: Path = Path(".")) -> str:
    """One line per page: translated messages out of all (fuzzy ones count as untranslated)."""
    lines = []
    for page, po in _catalogs(root).items():
        done, total = catalog_progress(po)
        lines.append(f"{page:40s} {done:4d}/{total:<4d} {100 * done / max(total, 1):5.1f}%")
    return "\n".join(lines)


def setup(app):
    app.add_config_value("bnbook_titles", {}, "html")
    app.connect("config-inited", _config_inited)
    app.connect("html-page-context", _page_context)
    app.connect("doctree-read", _keep_api_docs_in_english)
    app.add_transform(_toc_caption_transform())
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["lint"]:
        found = lint()
        print("\n".join(found) or "every translation carries its glue keys, references and math")
        sys.exit(1 if found else 0)
    if sys.argv[1:2] == ["check"]:
        found = check(Path(sys.argv[2]))
        print("\n".join(found) or "catalogs up to date with the English text")
        if found:
            print("run scripts/i18n update, translate what is new or fuzzy, commit locales/")
        sys.exit(1 if found else 0)
    print(status())
