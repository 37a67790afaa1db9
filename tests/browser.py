"""A real-browser check of a self-contained HTML page: headless Chromium from Debian's packages.

``check_page(path)`` opens ``file://path`` in headless Chromium (Debian's
``chromium`` package, which ``make browser`` installs when it is missing; no
browser is downloaded), driven by Playwright. It records:

* every request leaving the page: any URL other than the page itself or a
  ``data:`` URI (http(s), other local files, fonts, frames, fetches, web
  sockets). They are blocked (the context is offline and every route is
  aborted), so the check never reaches anything outside the page;
* console errors and uncaught page errors;
* dialogs (``alert``, ``confirm``, ``prompt``): a script injected through an
  unescaped metadata string would open one; they are dismissed;
* every ``<img>``: whether it loaded (``complete`` and ``naturalWidth > 0``).

Use one browser per test module (``launch_chromium`` in a module-scoped
fixture) and pass it to ``check_page``; each check gets a fresh context.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urldefrag

# CXR_CHROMIUM overrides the executable (e.g. a Chromium installed elsewhere on a developer's machine).
CHROMIUM_ENV = "CXR_CHROMIUM"
MISSING_CHROMIUM = (
    "headless Chromium is not installed: run `make browser` (installs Debian's `chromium` package; "
    "`make test` does it too), or set CXR_CHROMIUM to a Chromium executable"
)
# How long the page and each of its images may take to load, in milliseconds.
LOAD_TIMEOUT_MS = 15_000
IMAGE_TIMEOUT_MS = 3_000

# For each <img>: scroll it into view (a lazy image loads then), wait for its load or error, then report it.
_IMAGES_JS = """
async (timeout) => {
  const images = Array.from(document.images);
  for (const img of images) {
    if (!img.complete) {
      img.scrollIntoView();
      await new Promise((done) => {
        img.addEventListener("load", done, {once: true});
        img.addEventListener("error", done, {once: true});
        setTimeout(done, timeout);
      });
    }
  }
  return images.map((img) => ({
    src: img.getAttribute("src") || "",
    alt: img.getAttribute("alt") || "",
    complete: img.complete,
    width: img.naturalWidth,
    height: img.naturalHeight,
  }));
}
"""


class ChromiumMissingError(RuntimeError):
    """Debian's chromium is not on PATH (and CXR_CHROMIUM is not set); the message names `make browser`."""


@dataclass(frozen=True)
class ImageLoad:
    """One <img> of the page after loading: its src (shortened), alt text and natural size in pixels."""

    src: str
    alt: str
    complete: bool
    width: int
    height: int

    @property
    def loaded(self) -> bool:
        """The image shows: it finished loading and decoded to a non-empty picture."""
        return self.complete and self.width > 0


@dataclass(frozen=True)
class PageCheck:
    """What headless Chromium saw while opening one page offline."""

    url: str
    title: str
    requests_leaving: list[str] = field(default_factory=list)  # URLs other than the page and data: URIs (blocked)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions
    dialogs: list[str] = field(default_factory=list)  # "alert: 1" ...
    images: list[ImageLoad] = field(default_factory=list)

    @property
    def broken_images(self) -> list[ImageLoad]:
        """The images that did not load."""
        return [image for image in self.images if not image.loaded]

    @property
    def ok(self) -> bool:
        """Renders offline: no request leaves, every image shows, no error or dialog."""
        return not self.problems()

    def problems(self) -> list[str]:
        """One line per problem found (empty when the page is fine), for assertion messages."""
        problems = [f"request leaving the page: {url}" for url in self.requests_leaving]
        problems += [f"image did not load: {image.src} (alt {image.alt!r})" for image in self.broken_images]
        problems += [f"console error: {text}" for text in self.console_errors]
        problems += [f"page error: {text}" for text in self.page_errors]
        problems += [f"dialog opened: {text}" for text in self.dialogs]
        return problems


def chromium_executable() -> str:
    """The Chromium to drive: $CXR_CHROMIUM, else `chromium` on PATH (Debian's package).

    Raises:
        ChromiumMissingError: Neither is there; the message says to run `make browser`.
    """
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        if not (Path(configured).is_file() and os.access(configured, os.X_OK)):
            raise ChromiumMissingError(f"{CHROMIUM_ENV}={configured} is not an executable file. {MISSING_CHROMIUM}")
        return configured
    found = shutil.which("chromium")
    if found is None:
        raise ChromiumMissingError(MISSING_CHROMIUM)
    return found


@contextmanager
def launch_chromium() -> Iterator[object]:
    """Headless Debian Chromium under Playwright, closed on exit (yields a playwright Browser).

    Raises:
        ChromiumMissingError: Chromium is not installed (run `make browser`).
    """
    executable = chromium_executable()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            # Small /dev/shm in containers; no first-run, sync or component downloads of Chromium's own.
            args=["--disable-dev-shm-usage", "--no-first-run", "--disable-sync", "--disable-component-update"],
        )
        try:
            yield browser
        finally:
            browser.close()


def _same_document(url: str, page_url: str) -> bool:
    return urldefrag(url)[0] == page_url


def check_page(path: str | Path, browser: object | None = None) -> PageCheck:
    """Open `path` offline in headless Chromium and report requests, errors, dialogs and images.

    Args:
        path: An HTML file on disk.
        browser: A Browser from `launch_chromium` (one per test module); None launches one for this page.

    Returns:
        The PageCheck: `requests_leaving` lists every URL other than the page itself or a data: URI
        (each was blocked), and `images` every <img> with whether it loaded.

    Raises:
        FileNotFoundError: `path` is not a file.
        ChromiumMissingError: Chromium is not installed (run `make browser`).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such page")
    if browser is None:
        with launch_chromium() as own:
            return check_page(path, own)

    page_url = path.as_uri()
    leaving: list[str] = []
    console_errors: list[str] = []
    page_errors: list[str] = []
    dialogs: list[str] = []

    def note(url: str) -> None:
        if not url.startswith("data:") and not _same_document(url, page_url) and url not in leaving:
            leaving.append(url)

    def route(route) -> None:
        url = route.request.url
        if url.startswith("data:") or _same_document(url, page_url):
            route.continue_()
        else:
            note(url)
            route.abort("blockedbyclient")

    def on_dialog(dialog) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    context = browser.new_context(offline=True, service_workers="block")
    try:
        context.route("**/*", route)
        page = context.new_page()
        page.on("request", lambda request: note(request.url))  # also what routing does not see
        page.on("websocket", lambda socket: note(socket.url))
        page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.on("dialog", on_dialog)
        page.goto(page_url, wait_until="load", timeout=LOAD_TIMEOUT_MS)
        images = [
            ImageLoad(
                src=image["src"][:80] + ("..." if len(image["src"]) > 80 else ""),
                alt=image["alt"],
                complete=bool(image["complete"]),
                width=int(image["width"]),
                height=int(image["height"]),
            )
            for image in page.evaluate(_IMAGES_JS, IMAGE_TIMEOUT_MS)
        ]
        title = page.title()
    finally:
        context.close()
    return PageCheck(
        url=page_url,
        title=title,
        requests_leaving=leaving,
        console_errors=console_errors,
        page_errors=page_errors,
        dialogs=dialogs,
        images=images,
    )
