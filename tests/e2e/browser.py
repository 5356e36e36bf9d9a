"""Headless Debian Chromium driven by Playwright, and what a test watches in a page.

Playwright's own browser download cannot work here; its Python package ships
the driver, and ``executable_path`` points it at ``/usr/bin/chromium``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")

# The flags the issue asks for; a fresh --user-data-dir is added per launch.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # SwiftShader WebGL without a GPU: Chromium refuses it silently otherwise.
    "--enable-unsafe-swiftshader",
    "--use-angle=swiftshader",
]

# Console messages of type "error" that OHIF 3.13 logs on a healthy run against a
# healthy server. Each is matched as a regular expression against the text.
KNOWN_OHIF_CONSOLE_NOISE: list[tuple[str, str]] = [
    # React's development-style warnings about props are printed with console.error.
    (r"^Warning: ", "React prop-type / key warnings from OHIF's own components"),
    # Cornerstone probes WebGL capabilities; SwiftShader lacks some and it says so.
    (r"WebGL|GPU stall|GL_", "SwiftShader (software WebGL) capability messages"),
    # The PWA service worker is blocked by the test context on purpose.
    (r"[Ss]ervice ?[Ww]orker", "service worker registration, blocked by the tests"),
]


def chromium_path() -> str | None:
    for path in (os.environ.get("DICOMWEB_E2E_CHROMIUM"), *CHROMIUM_CANDIDATES):
        if path and os.access(path, os.X_OK):
            return path
    found = shutil.which("chromium")
    return found


def is_known_noise(text: str) -> bool:
    return any(re.search(pattern, text) for pattern, _why in KNOWN_OHIF_CONSOLE_NOISE)


@dataclass
class NetEntry:
    method: str
    url: str
    status: int | None  # None: the request failed (no response)
    failure: str | None = None
    resource_type: str = ""

    def line(self) -> str:
        status = str(self.status) if self.status is not None else f"FAILED ({self.failure})"
        return f"{status:>6} {self.method:<7} {self.url}"


@dataclass
class PageWatch:
    """Everything a page did that a test may want to assert on or report."""

    server_url: str
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    page_errors: list[str] = field(default_factory=list)
    requests: list[NetEntry] = field(default_factory=list)
    pending: set[Any] = field(default_factory=set)

    def attach(self, page: Any) -> None:
        page.on("console", lambda msg: self.console.append((msg.type, msg.text)))
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("request", lambda request: self.pending.add(request))
        page.on("requestfinished", self._finished)
        page.on("requestfailed", self._failed)

    def wait_quiet(self, page: Any, quiet_ms: int = 1500, timeout_ms: int = 90_000) -> None:
        """Wait until no request has been in flight for ``quiet_ms`` (OHIF prefetches after the first image)."""
        waited = quiet = 0
        while quiet < quiet_ms:
            if waited > timeout_ms:
                raise TimeoutError(f"{len(self.pending)} requests still pending after {timeout_ms} ms: "
                                   + ", ".join(r.url for r in list(self.pending)[:5]))
            page.wait_for_timeout(100)
            waited += 100
            quiet = quiet + 100 if not self.pending else 0

    def _finished(self, request: Any) -> None:
        self.pending.discard(request)
        response = request.response()
        self.requests.append(NetEntry(request.method, request.url, response.status if response else None,
                                      resource_type=request.resource_type))

    def _failed(self, request: Any) -> None:
        self.pending.discard(request)
        self.requests.append(NetEntry(request.method, request.url, None, request.failure or "failed",
                                      request.resource_type))

    # -- what tests assert ---------------------------------------------------

    def server_requests(self) -> list[NetEntry]:
        return [r for r in self.requests if r.url.startswith(self.server_url)]

    def bad_requests(self) -> list[NetEntry]:
        """Responses >= 400 and requests that failed, from any origin.

        ``net::ERR_ABORTED`` is OHIF cancelling its own prefetch requests when a
        page changes; that is not a server failure, so it is left out.
        """
        return [r for r in self.requests
                if (r.status is not None and r.status >= 400)
                or (r.status is None and "ERR_ABORTED" not in (r.failure or ""))]

    def console_errors(self) -> list[str]:
        errors = [text for kind, text in self.console if kind == "error" and not is_known_noise(text)]
        return errors + [f"uncaught: {e}" for e in self.page_errors]

    def report(self) -> str:
        lines = [f"{len(self.requests)} requests:"]
        lines += ["  " + r.line() for r in self.requests]
        lines.append("console:")
        lines += [f"  [{kind}] {text[:500]}" for kind, text in self.console]
        lines += [f"  [pageerror] {e[:500]}" for e in self.page_errors]
        return "\n".join(lines)


def launch(playwright: Any, executable: str, **context_options: Any) -> tuple[Any, str]:
    """A headless Chromium with a fresh profile: (browser context, profile directory).

    Playwright wants the profile as ``launch_persistent_context``'s argument, not
    as ``--user-data-dir`` among the flags; the effect is the same. OHIF's PWA
    service worker is blocked so that every request shows up in the page's events.
    """
    profile = tempfile.mkdtemp(prefix="dicomweb-chromium-")
    options: dict[str, Any] = {"viewport": {"width": 1280, "height": 900}, "service_workers": "block"}
    options.update(context_options)
    context = playwright.chromium.launch_persistent_context(
        profile, executable_path=executable, headless=True, args=CHROMIUM_ARGS, **options)
    return context, profile


# Injected before OHIF's scripts: marks the performance timeline when the first
# non-blank image appears in a viewport canvas ("dicomweb-first-image"), and when
# Cornerstone first reports a rendered image ("dicomweb-image-rendered").
FIRST_IMAGE_PROBE = """
(() => {
  const probe = document.createElement('canvas');
  probe.width = probe.height = 32;
  let done = false;
  document.addEventListener('CORNERSTONE_IMAGE_RENDERED', () => {
    if (!performance.getEntriesByName('dicomweb-image-rendered').length) {
      performance.mark('dicomweb-image-rendered');
    }
  }, true);
  function check() {
    if (done) return;
    for (const canvas of document.querySelectorAll('canvas.cornerstone-canvas')) {
      if (!canvas.width || !canvas.height) continue;
      const ctx = probe.getContext('2d', {willReadFrequently: true});
      ctx.clearRect(0, 0, 32, 32);
      try { ctx.drawImage(canvas, 0, 0, 32, 32); } catch (e) { continue; }
      const data = ctx.getImageData(0, 0, 32, 32).data;
      let sum = 0, sum2 = 0, n = 0;
      for (let i = 0; i < data.length; i += 4) {
        const v = (data[i] + data[i + 1] + data[i + 2]) / 3;
        sum += v; sum2 += v * v; n++;
      }
      const variance = sum2 / n - (sum / n) ** 2;
      if (variance > 4) {
        done = true;
        performance.mark('dicomweb-first-image', {detail: {variance}});
        return;
      }
    }
    setTimeout(check, 20);
  }
  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', check);
  } else {
    check();
  }
})();
"""


# Run in the page: luminance statistics of the main (first) viewport's canvas.
CANVAS_STATS = """
() => {
  const canvas = document.querySelector('canvas.cornerstone-canvas');
  if (!canvas || !canvas.width || !canvas.height) return null;
  const copy = document.createElement('canvas');
  copy.width = canvas.width; copy.height = canvas.height;
  const ctx = copy.getContext('2d');
  ctx.drawImage(canvas, 0, 0);
  const data = ctx.getImageData(0, 0, copy.width, copy.height).data;
  let sum = 0, sum2 = 0, n = 0;
  const levels = new Set();
  for (let i = 0; i < data.length; i += 4) {
    const v = Math.round((data[i] + data[i + 1] + data[i + 2]) / 3);
    sum += v; sum2 += v * v; n++; levels.add(v);
  }
  const mean = sum / n;
  return {width: copy.width, height: copy.height, mean, std: Math.sqrt(Math.max(0, sum2 / n - mean * mean)),
          levels: levels.size};
}
"""
