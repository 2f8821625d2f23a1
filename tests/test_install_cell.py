"""Colab and Binder run the chapters unmodified (issue 13): the hidden install cell.

``scripts/install-cell`` writes each chapter's first code cell, which installs bnlib from the
repository in ``_config.yml`` when ``import bnlib`` fails. These tests check that every chapter
carries the current cell, that the script is idempotent and keeps the notebook executed in
order, that Binder's ``postBuild`` installs the same package, and, end to end, that a chapter
runs in a fresh environment without bnlib, where the cell installs it (from a local copy of
the repository named by ``BNBOOK_INSTALL_FROM``: tests have no network) and nbval then
reproduces every stored output.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

from reader_contract import chapter_params, load_install_cell

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install-cell"
# A small chapter for the end-to-end run: a few seconds of CPU.
FRESH_ENV_CHAPTER = ROOT / "chapters" / "06_tools_and_resources.ipynb"


install_cell = load_install_cell()


@pytest.mark.parametrize("path", chapter_params("install-cell"))
def test_every_chapter_starts_with_the_current_install_cell(path):
    problems = install_cell.problems(nbformat.read(path, as_version=4), install_cell.cell_source())
    assert not problems, (
        f"{path.name}: "
        + "; ".join(problems)
        + f"\n  fix: scripts/install-cell chapters/{path.name}"
    )


def test_the_cell_installs_from_the_repository_in_config_yml(tmp_path):
    config = tmp_path / "_config.yml"
    config.write_text(
        "repository:\n  url: https://github.com/someone/fork/\n  branch: dev\n", encoding="utf-8"
    )
    source = install_cell.cell_source(config)
    assert '"git+https://github.com/someone/fork@dev"' in source
    assert "BNBOOK_INSTALL_FROM" in source
    compile(source, "install-cell", "exec")
    assert max(len(line) for line in source.splitlines()) <= 79


def test_the_script_inserts_once_keeps_counts_and_detects_a_stale_cell(tmp_path):
    target = tmp_path / FRESH_ENV_CHAPTER.name
    shutil.copy(FRESH_ENV_CHAPTER, target)
    before = nbformat.read(target, as_version=4)
    before_counts = [
        c.execution_count
        for c in before.cells
        if c.cell_type == "code" and not install_cell.is_install_cell(c)
    ]
    run = [sys.executable, str(SCRIPT)]
    subprocess.run(run + [str(target)], check=True, capture_output=True)
    once = target.read_bytes()
    subprocess.run(run + [str(target)], check=True, capture_output=True)
    assert target.read_bytes() == once, "a second run changed the notebook"
    assert subprocess.run(run + ["--check", str(target)]).returncode == 0
    nb = nbformat.read(target, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert install_cell.is_install_cell(code[0]) and code[0].metadata.tags == ["remove-cell"]
    assert sum(install_cell.is_install_cell(c) for c in nb.cells) == 1
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), counts
    if before_counts and before_counts[0] == 1:  # inserted: the others moved up by one
        assert counts[1:] == [n + 1 for n in before_counts]
    assert nb.cells[0].cell_type == "markdown", "the title must stay the first cell"
    # A fork edits _config.yml: the cell is then stale, and the script rewrites it.
    fork = tmp_path / "_config.yml"
    fork.write_text("repository:\n  url: https://github.com/someone/fork\n", encoding="utf-8")
    stale = subprocess.run(
        run + ["--check", "--config", str(fork), str(target)], capture_output=True, text=True
    )
    assert stale.returncode == 1 and "stale" in stale.stdout
    subprocess.run(run + ["--config", str(fork), str(target)], check=True, capture_output=True)
    assert "someone/fork@main" in "".join(nbformat.read(target, as_version=4).cells[1].source)


def test_binder_postbuild_installs_bnlib_from_the_checkout():
    """Binder installs requirements.txt (which has myst-nb's jupyter-book and scikit-learn)
    and then runs postBuild, so the install cell finds bnlib and does nothing there."""
    post_build = ROOT / "postBuild"
    assert os.access(post_build, os.X_OK), "postBuild must be executable"
    commands = [
        line.strip()
        for line in post_build.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "pip install --no-deps -e ." in commands
    requirements = (ROOT / "requirements.txt").read_text()
    for package in ("jupyter-book==", "scikit-learn==", "torch==", "numpy=="):
        assert package in requirements


def _fresh_env(tmp_path):
    """A venv without bnlib that reuses the main environment's packages through a .pth line.

    A .pth file in a folder that a .pth line adds is not processed, so the main venv's
    editable bnlib (``__editable__.bnlib-0.1.0.pth``) stays invisible there."""
    env = tmp_path / "env"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "bnbook_main_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, Path(site)


def _copy_of_the_repository(target):
    """The files pip needs to build bnlib (a copy, so the build writes nothing here)."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, target / name)
    shutil.copytree(
        ROOT / "bnlib", target / "bnlib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return target


def test_a_chapter_runs_in_a_fresh_environment_where_the_cell_installs_bnlib(tmp_path):
    python, site = _fresh_env(tmp_path)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV", "JUPYTER"))
    }

    def probe(code, **kwargs):  # run in tmp_path: the working directory is on sys.path
        return subprocess.run(
            [str(python), "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            **kwargs,
        )

    missing = probe("import bnlib")
    assert missing.returncode != 0 and "No module named 'bnlib'" in missing.stderr, (
        "bnlib is importable in the fresh environment before the cell ran"
    )
    probe("import torch, numpy, myst_nb, sklearn, nbval", check=True)

    notebook = tmp_path / "nb" / FRESH_ENV_CHAPTER.name
    notebook.parent.mkdir()
    nb = nbformat.read(FRESH_ENV_CHAPTER, as_version=4)
    install_cell.apply(nb, install_cell.cell_source())
    nbformat.write(nb, notebook)

    env.update(
        {
            "BNBOOK_INSTALL_FROM": str(_copy_of_the_repository(tmp_path / "repository")),
            # No network in tests: pip must use what the environment has. numpy and torch
            # (bnlib's dependencies) come through the .pth line; pip would also see the main
            # venv's bnlib there, so it is told to install regardless.
            "PIP_NO_INDEX": "1",
            "PIP_NO_BUILD_ISOLATION": "0",
            "PIP_IGNORE_INSTALLED": "1",
            "PIP_NO_DEPS": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1",
        }
    )
    result = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "--nbval",
            "--nbval-current-env",
            "--nbval-sanitize-with",
            str(ROOT / "tests" / "nbval_sanitize.cfg"),
            str(notebook),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

    where = probe("import bnlib; print(bnlib.__file__)", check=True).stdout.strip()
    assert Path(where).is_relative_to(site), f"bnlib came from {where}, not the fresh env"
    # Package data arrives with the install: chapter 9 reads its recorded benchmark there,
    # where the repository's folders do not exist.
    recorded = probe(
        "from bnlib import records; print(records.names());"
        " print(records.load_json(records.names()[0])['clock'])",
        check=True,
    ).stdout
    shipped = sorted(
        p.name for p in (ROOT / "bnlib" / "records").iterdir() if p.suffix in (".json", ".txt")
    )
    assert str(shipped) in recorded, (recorded, shipped)


def test_no_chapter_reads_files_outside_the_package():
    """A notebook run in Colab has the chapter alone, not the repository: every file a chapter
    reads comes with bnlib (``bnlib.records``) or is written by the chapter itself."""
    offenders = []
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "code" and "../" in cell.source:
                offenders.append(f"{path.name} cell {index}")
    assert not offenders, "reads the repository through '../': " + ", ".join(offenders)
