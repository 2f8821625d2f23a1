"""chapters/06b_api_reference.md documents every public module of bnlib.

A module is public when no part of its dotted name starts with an underscore. It must have
its own ``automodule`` directive in 06b, unless every name of its ``__all__`` is also in its
parent package's ``__all__`` (then the package's directive documents it). Modules are found
on disk and their ``__all__`` read with ``ast``, so the check imports nothing.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "chapters" / "06b_api_reference.md"


def _all_names(path: Path) -> set[str] | None:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                return set(ast.literal_eval(node.value))
    return None


def public_modules() -> dict[str, Path]:
    """``{dotted name: file}`` of every public module and package of bnlib."""
    out = {}
    for path in sorted((ROOT / "bnlib").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts) or "__pycache__" in path.parts:
            continue
        out[".".join(parts)] = path
    return out


def needs_own_entry(name: str, modules: dict[str, Path]) -> bool:
    parent = name.rpartition(".")[0]
    if not parent:  # bnlib itself: its contents are the packages below
        return False
    if modules[name].name == "__init__.py":
        return True
    names, parent_names = _all_names(modules[name]), _all_names(modules[parent])
    return not (names and parent_names and names <= parent_names)


def documented() -> list[str]:
    return re.findall(
        r"^\.\. automodule:: ([\w.]+)\s*$", PAGE.read_text(encoding="utf-8"), flags=re.M
    )


def test_every_public_module_is_documented_once_and_nothing_else():
    modules = public_modules()
    listed = documented()
    assert len(listed) == len(set(listed)), "a module is listed twice"
    required = {name for name in modules if needs_own_entry(name, modules)}
    assert not required - set(listed), f"06b lacks {sorted(required - set(listed))}"
    assert not set(listed) - set(modules), (
        f"06b lists missing modules {sorted(set(listed) - set(modules))}"
    )


def test_the_rule_sees_reexports_and_private_modules():
    modules = public_modules()
    assert "bnlib.experiments.protocol" in modules and "bnlib.checks" in modules
    assert not any(name.rpartition(".")[2].startswith("_") for name in modules)
    assert not needs_own_entry("bnlib.experiments.data", modules)  # re-exported
    assert needs_own_entry("bnlib.experiments.protocol", modules)


MAX_CODE_LINE = 79  # the column the book's code boxes hold at 1280 px (_static/code-column.css)


def _code_lines(doc: str):
    """The lines of a cleaned docstring that the page shows in code boxes: doctest blocks
    (``>>>`` and ``...`` lines and the output after them, up to a blank line) and literal
    blocks (the indented lines after a paragraph that ends with ``::``), without the block's
    own indentation."""
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(">>>"):
            indent = len(line) - len(stripped)
            while i < len(lines) and lines[i].strip():
                yield lines[i][indent:]
                i += 1
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            base = len(line) - len(stripped)
            i += 1
            block = []
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > base
            ):
                block.append(lines[i])
                i += 1
            body = [b for b in block if b.strip()]
            if body:
                indent = min(len(b) - len(b.lstrip()) for b in body)
                yield from (b[indent:] for b in body)
            continue
        i += 1


def _docstrings(path: Path):
    """(qualified name, cleaned docstring) of the module and every class and function in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [("<module>", ast.get_docstring(tree))]
    stack = [(node, "") for node in tree.body]
    while stack:
        node, prefix = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + node.name
            found.append((name, ast.get_docstring(node)))
            if isinstance(node, ast.ClassDef):
                stack.extend((child, name + ".") for child in node.body)
    return [(name, doc) for name, doc in found if doc]


def test_docstring_code_fits_the_code_column():
    """The API page's code boxes (examples, literal blocks) do not scroll sideways: their
    lines fit the 79 characters a code box holds at 1280 px, as the chapters' code does."""
    wide = []
    for module, path in public_modules().items():
        for name, doc in _docstrings(path):
            for line in _code_lines(doc):
                if len(line) > MAX_CODE_LINE:
                    wide.append(f"{module}.{name}: {len(line)} chars: {line[:60]}")
    assert not wide, f"{len(wide)} docstring code lines wider than {MAX_CODE_LINE}:\n" + "\n".join(
        wide
    )


def test_code_lines_of_a_docstring_are_found():
    doc = "Summary.\n\nExample::\n\n    a = 1\n    b = 2\n\nText.\n\n>>> f(1)\n3\n\nEnd."
    assert list(_code_lines(doc)) == ["a = 1", "b = 2", ">>> f(1)", "3"]
