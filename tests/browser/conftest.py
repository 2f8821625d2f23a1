"""Fixtures for the browser check of the built book (DESIGN.md section 5).

The built HTML (``_build/html``, or the folder named by ``BNBOOK_HTML``) is served with
``python -m http.server`` on 127.0.0.1 and opened in Debian's ``chromium``, driven by
Playwright. Every request that leaves 127.0.0.1 is blocked, so the check proves that the book
renders offline. Without chromium the check skips, except in CI (``CI=true``), where it fails.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# tests/reader_contract.py (NOT_YET_COMPLIANT), shared with the notebook-contract test.
sys.path.insert(0, str(ROOT / "tests"))
HTML_DIR = Path(os.environ.get("BNBOOK_HTML", ROOT / "_build" / "html")).resolve()
# Screenshots go next to the HTML folder: _build/screenshots for the default _build/html.
SCREENSHOT_DIR = Path(os.environ.get("BNBOOK_SCREENSHOTS", HTML_DIR.parent / "screenshots"))
IN_CI = os.environ.get("CI", "") == "true"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Folders of the build that hold assets, not pages of the book.
NOT_PAGES = {"_static", "_sources", "_images", "_downloads", "_panels_static"}


def find_chromium():
    """Return the path of Debian's chromium (or of the browser named by BNBOOK_CHROMIUM)."""
    if os.environ.get("BNBOOK_CHROMIUM"):
        candidates = [os.environ["BNBOOK_CHROMIUM"]]
    else:
        candidates = ["/usr/bin/chromium", shutil.which("chromium")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def html_pages():
    """Every page of the built book, as paths relative to the HTML folder (posix style)."""
    if not (HTML_DIR / "index.html").is_file():
        return []
    pages = []
    for path in sorted(HTML_DIR.rglob("*.html")):
        rel = path.relative_to(HTML_DIR)
        # Asset folders sit at the top of each edition: _static/, zh/_static/, ...
        if not set(rel.parts[:2]) & NOT_PAGES:
            pages.append(rel.as_posix())
    return pages


def _unavailable(message):
    """Fail in CI, skip elsewhere: the browser check must not silently vanish from CI."""
    if IN_CI:
        pytest.fail(message + " (CI=true, so this is an error)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium_path():
    path = find_chromium()
    if path is None:
        _unavailable(
            "chromium not found: install it with `apt-get install -y chromium` "
            "(Debian) to run the browser check"
        )
    return path


@pytest.fixture(scope="session")
def html_dir():
    if not (HTML_DIR / "index.html").is_file():
        _unavailable(
            f"no built book at {HTML_DIR}: build it first with scripts/book, "
            "or point BNBOOK_HTML at a built _build/html folder"
        )
    return HTML_DIR


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(directory):
    """Serve ``directory`` with ``python -m http.server`` on 127.0.0.1; yield its root URL."""
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"http.server did not start on port {port}", pytrace=False)
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def base_url(html_dir):
    """The built book, served on 127.0.0.1 for the whole session."""
    with serve(html_dir) as url:
        yield url


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def screenshot_dir():
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    return SCREENSHOT_DIR


def pytest_generate_tests(metafunc):
    """Parametrize ``path`` with every page of the built book."""
    if "path" in metafunc.fixturenames:
        metafunc.parametrize("path", html_pages())
