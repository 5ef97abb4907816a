"""Checks of the built book in _build/html: links, images, Colab links, and a real browser.

`make book` builds the site; these tests are skipped until it has. `.ci/run` builds the book
before `make test`, and sets MAE_TUTORIAL_REQUIRE_BROWSER=1 so that a missing Chromium fails
instead of skipping.

The browser test drives headless Chromium (Debian's `chromium`) over the DevTools protocol: it
serves the site from a local HTTP server, loads every chapter, fails on JavaScript exceptions,
console errors and failed same-origin requests, checks that every image decodes to a non-empty
picture, checks that MathJax typeset every formula (none is left as raw TeX such as `\\(B\\)`),
and saves a screenshot of each page in _build/screenshots. Requests to other hosts are blocked,
so the result is the same with or without a network: the book must carry its own MathJax
(`sphinx-mathjax-offline`, see _config.yml).
"""

from __future__ import annotations

import base64
import functools
import html
import http.server
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import pytest

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# The reference pages every chapter links to (glossary, cheat sheet, what can go wrong).
REFERENCE_PAGES = ("glossary", "cheatsheet", "pitfalls")

pytestmark = pytest.mark.skipif(
    not (BUILD / "index.html").is_file(),
    reason="no built book in _build/html: run `make book` first (.ci/run does)",
)

COLAB = re.compile(
    r"https://colab\.research\.google\.com/github/([^/\"'\s]+)/([^/\"'\s]+)/blob/([^/\"'\s]+)/"
    r"notebooks/([^\"'\s]+\.ipynb)"
)


def repository() -> tuple[str, str]:
    """(org, repo) of the repository url set once in _config.yml."""
    config = (ROOT / "_config.yml").read_text(encoding="utf-8")
    match = re.search(r"^\s+url:\s*https://github\.com/([^/\s]+)/([^/\s]+?)/?\s*$", config, re.M)
    assert match, "_config.yml has no repository url of the form https://github.com/<org>/<repo>"
    return match.group(1), match.group(2)


def root_page() -> Path:
    """The landing page: the toc's root (index.html only redirects to it)."""
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    match = re.search(r"^root:\s*(\S+)\s*$", toc, re.M)
    assert match, "_toc.yml names no root page"
    return BUILD / f"{match.group(1)}.html"


def chapter_page(notebook: Path) -> Path:
    return BUILD / "notebooks" / f"{notebook.stem}.html"


# ------------------------------------------------------------------------------ links and images


class _Page(HTMLParser):
    """Collects the ids of a page and the local URLs it links to or loads."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.urls: list[tuple[str, str]] = []  # (tag.attribute, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("id", "name"):
            if values.get(name) and (name == "id" or tag == "a"):
                self.ids.add(values[name])
        for attr in ("href", "src"):
            url = values.get(attr)
            if url is not None and tag in ("a", "img", "link", "script", "source", "iframe"):
                self.urls.append((f"{tag}.{attr}", url))


@functools.cache
def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def local_target(page: Path, url: str) -> tuple[Path, str] | None:
    """(file, fragment) a relative URL on `page` points to, or None for other sites and schemes."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or url.startswith(("mailto:", "javascript:", "data:")):
        return None
    if not parts.path:
        return page, unquote(parts.fragment)
    target = (page.parent / unquote(parts.path)).resolve()
    if target.is_dir():
        target = target / "index.html"
    return target, unquote(parts.fragment)


def test_every_internal_link_and_image_resolves() -> None:
    # _static holds the themes' Jinja macro files, which are not pages.
    pages = sorted(p for p in BUILD.rglob("*.html") if "_static" not in p.relative_to(BUILD).parts)
    broken = []
    for page in pages:
        for what, url in parse(page).urls:
            found = local_target(page, url)
            if found is None:
                continue
            target, fragment = found
            where = f"{page.relative_to(BUILD)}: {what}={url!r}"
            if not target.is_relative_to(BUILD.resolve()) or not target.is_file():
                broken.append(f"{where} (no file)")
            elif fragment and target.suffix == ".html" and fragment not in parse(target).ids:
                broken.append(f"{where} (no #{fragment} there)")
    assert len(pages) > 3
    assert not broken, "broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.name)
def test_chapter_page_exists_and_links_to_colab(notebook: Path) -> None:
    page = chapter_page(notebook)
    assert page.is_file(), (
        f"{notebook.name} has no page in _build/html: is it in _toc.yml? `make book`"
    )
    links = set(COLAB.findall(page.read_text(encoding="utf-8")))
    assert links, f"{page.name} has no Colab link"
    for org, repo, branch, file in links:
        assert (org, repo) == repository(), f"Colab link names {org}/{repo}"
        assert branch == "main"
        assert (ROOT / "notebooks" / file).is_file(), f"Colab link names a missing notebook {file}"
    assert {file for *_, file in links} == {notebook.name}


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.name)
def test_markdown_tables_render_as_tables(notebook: Path) -> None:
    # A table in a cell or in a cell's Markdown output must become <table>, not text with pipes
    # (myst-nb's default CommonMark renderer for outputs has no tables).
    text = chapter_page(notebook).read_text(encoding="utf-8")
    text = re.sub(r"<pre.*?</pre>", "", text, flags=re.DOTALL)  # code may hold such strings
    raw = re.findall(r"\|(?:---|\u2014)\|", text)
    assert not raw, f"{notebook.name} shows {len(raw)} Markdown table rules as text"


def test_landing_page_shows_its_figures() -> None:
    images = [url for what, url in parse(root_page()).urls if what == "img.src"]
    assert any(url.endswith("intro_masking.png") for url in images)
    assert any(url.endswith("architecture.png") for url in images)


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.name)
def test_chapter_links_to_the_reference_pages(notebook: Path) -> None:
    page = chapter_page(notebook)
    links = {url for what, url in parse(page).urls if what == "a.href"}
    for name in REFERENCE_PAGES:
        assert f"../book/{name}.html" in links, f"{page.name} does not link to {name}"


def test_default_exp_cells_are_hidden_and_export_cells_shown() -> None:
    # `#| default_exp` means nothing to a reader (book/_ext/nbdev_directives.py drops those cells);
    # export cells are the package's code and stay, first line included.
    for notebook in CHAPTERS:
        blocks = re.findall(r"<pre.*?</pre>", chapter_page(notebook).read_text("utf-8"), re.DOTALL)
        text = html.unescape(re.sub(r"<[^>]+>", "", "\n".join(blocks)))  # the code on the page
        assert "#| default_exp" not in text, f"{notebook.name} shows a default_exp cell"
        if "#| export" in notebook.read_text(encoding="utf-8"):
            assert "#| export" in text, f"{notebook.name} hides its export cells"


# ------------------------------------------------------------------------------- headless browser

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Every host but this machine is unreachable: CI has no network, and this makes a laptop the same.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


class DevTools:
    """A minimal client of the Chrome DevTools Protocol over one websocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message: dict = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + 60
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            self.events.append(
                json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The built book served over HTTP on 127.0.0.1; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(BUILD))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[DevTools]:
    """Headless Chromium with its own throwaway profile, driven over the DevTools protocol."""
    chromium = find_chromium()
    if chromium is None:
        message = "no Chromium found (Debian: apt-get install chromium)"
        if os.environ.get("MAE_TUTORIAL_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("websockets.sync.client", reason="the browser test needs `websockets`")
    from websockets.sync.client import connect

    with tempfile.TemporaryDirectory(prefix="mae-chromium-", ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in process.stderr], daemon=True).start()
        try:
            deadline, url = time.monotonic() + 60, None
            while url is None and time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=1)
                except queue.Empty:
                    if process.poll() is not None:
                        break
                    continue
                if match := re.search(r"DevTools listening on (ws://\S+)", line):
                    url = match.group(1)
            assert url, f"Chromium did not start (exit code {process.poll()})"
            with connect(url, max_size=None, open_timeout=30) as ws:
                yield DevTools(ws)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# Runs in the page: make every image load now, then report each one's size.
_IMAGES_JS = """
Promise.all([...document.images].map(img => {
  img.loading = "eager";
  return img.decode().catch(() => null).then(() => ({
    src: img.getAttribute("src"), width: img.naturalWidth, complete: img.complete}));
}))
"""


# Runs in the page: wait until MathJax has typeset the page, then list the formulas it did not
# typeset. Sphinx writes each formula as TeX inside an element of class "math"; MathJax 3 puts an
# <mjx-container> there. A formula whose element has none, or TeX delimiters left in the text of
# the page outside code, is raw TeX on the reader's screen.
_MATH_JS = r"""
(async () => {
  const mathjax = window.MathJax && window.MathJax.startup && window.MathJax.startup.promise;
  if (mathjax) { await Promise.race([mathjax, new Promise(r => setTimeout(r, 20000))]); }
  const formulas = [...document.querySelectorAll(".math")];
  const raw = formulas.filter(el => !el.querySelector("mjx-container"))
    .map(el => el.textContent.trim().slice(0, 60));
  const walker = document.createTreeWalker(document.querySelector("main") || document.body,
    NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest("pre, code, script, style, .highlight, mjx-container")) continue;
    if (/\\\(|\\\[|\$\$/.test(node.textContent)) raw.push(node.textContent.trim().slice(0, 60));
  }
  return {formulas: formulas.length, raw: raw};
})()
"""


def load_page(browser: DevTools, url: str, screenshot: Path) -> tuple[list[str], list[dict], dict]:
    """Open `url` in a new tab; returns (problems the page reported, its images, its math)."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable", session=session)
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 1600, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    browser.events.clear()
    browser.send("Page.navigate", {"url": url}, session=session)
    browser.wait_for("Page.loadEventFired", session)
    images = browser.send(
        "Runtime.evaluate",
        {"expression": _IMAGES_JS, "awaitPromise": True, "returnByValue": True},
        session=session,
    )["result"]["value"]
    math = browser.send(
        "Runtime.evaluate",
        {"expression": _MATH_JS, "awaitPromise": True, "returnByValue": True},
        session=session,
    )["result"]["value"]
    time.sleep(0.5)  # let late scripts report
    shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    browser.send("Runtime.evaluate", {"expression": "0"}, session=session)  # flush events
    problems = page_problems(
        [e for e in browser.events if e.get("sessionId") == session], origin=url
    )
    browser.send("Target.closeTarget", {"targetId": target})
    return problems, images, math


def page_problems(events: list[dict], origin: str) -> list[str]:
    """JavaScript exceptions, console errors and failed same-origin requests among `events`."""
    local = "{0.scheme}://{0.netloc}".format(urlsplit(origin))
    failed_requests = {}
    problems = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            failed_requests[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFailed":
            url = failed_requests.get(params["requestId"], "?")
            if url.startswith(local):
                problems.append(f"request failed: {url} ({params.get('errorText')})")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            problems.append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            problems.append(f"console.error: {args}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            # Another host being unreachable is this machine's network, not the page.
            if entry.get("source") == "network" and not entry.get("url", "").startswith(local):
                continue
            problems.append(f"console: {entry.get('text')} {entry.get('url', '')}".strip())
    return problems


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.name)
def test_chapter_loads_in_chromium_without_errors_and_shows_its_figures(
    notebook: Path, site: str, browser: DevTools
) -> None:
    path = chapter_page(notebook).relative_to(BUILD).as_posix()
    problems, images, math = load_page(
        browser, f"{site}/{path}", SCREENSHOTS / f"{notebook.stem}.png"
    )
    assert not problems, f"{path}:\n" + "\n".join(problems)
    figures = [image for image in images if "_images/" in (image["src"] or "")]
    assert figures, f"{path} shows no figure"
    empty = [image["src"] for image in images if not image["width"]]
    assert not empty, f"{path}: images that did not render: {empty}"
    assert not math["raw"], f"{path}: formulas left as raw TeX: {math['raw'][:5]}"


def test_every_chapter_has_typeset_math(site: str, browser: DevTools) -> None:
    # Guards the raw-TeX check above against passing vacuously (no formula found at all).
    path = chapter_page(CHAPTERS[1]).relative_to(BUILD).as_posix()
    _, _, math = load_page(browser, f"{site}/{path}", SCREENSHOTS / "math.png")
    assert math["formulas"] > 5 and not math["raw"], math


@pytest.mark.parametrize("name", REFERENCE_PAGES)
def test_reference_page_loads_in_chromium_with_typeset_math(
    name: str, site: str, browser: DevTools
) -> None:
    problems, images, math = load_page(
        browser, f"{site}/book/{name}.html", SCREENSHOTS / f"{name}.png"
    )
    assert not problems, f"{name}:\n" + "\n".join(problems)
    assert not math["raw"], f"{name}: formulas left as raw TeX: {math['raw'][:5]}"


def test_landing_page_loads_in_chromium(site: str, browser: DevTools) -> None:
    problems, images, math = load_page(
        browser, f"{site}/{root_page().relative_to(BUILD).as_posix()}", SCREENSHOTS / "intro.png"
    )
    assert not problems, "landing page:\n" + "\n".join(problems)
    assert images and all(image["width"] for image in images)
    assert not math["raw"], f"landing page: formulas left as raw TeX: {math['raw'][:5]}"
