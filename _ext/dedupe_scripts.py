"""Remove duplicate <script> entries from each page (Sphinx 7.4 emits sphinx-thebe's inline
``const THEBE_JS_URL`` twice, and the browser reports a redeclared identifier).

tests/browser checks that no page reports that error."""


def _dedupe(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # The same inline script arrives once with filename None and once with filename "",
        # so compare the filename up to that difference, and the attributes (body included).
        attributes = getattr(script, "attributes", {})
        key = (getattr(script, "filename", str(script)) or "", tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
