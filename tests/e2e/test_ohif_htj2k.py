"""OHIF (Cornerstone3D) loading HTJ2K frames progressively from our server.

The data source is configured with ``stackRetrieveOptions`` from
``tests.e2e.ohif.htj2k_progressive``: each frame is asked for as HTJ2K
(4.202) first with a byte ``Range`` of its first 16 KiB, drawn at a low
resolution, then for the rest. The server transcodes the stored native CT
on the first request and keeps the codestream in its derived frame cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.browser import CANVAS_STATS, PageWatch
from tests.e2e.conftest import OHIF_DIST, Corpus, Tab, _missing
from tests.e2e.ohif import OhifSite, htj2k_progressive
from tests.e2e.test_ohif import assert_clean, wait_for

pytestmark = pytest.mark.e2e
RPCL = "1.2.840.10008.1.2.4.202"


@dataclass
class FrameResponse:
    url: str
    status: int
    range: str | None
    content_type: str
    content_range: str | None
    part_type: str | None  # the first part's Content-Type (multipart bodies)


@pytest.fixture
def progressive_tab(browser: Any, e2e_server: Corpus) -> Iterator[tuple[Tab, list[FrameResponse]]]:
    if not os.path.exists(os.path.join(OHIF_DIST, "index.html")):
        _missing("OHIF build missing: run `npm ci --ignore-scripts` in tests/ohif (scripts/test does)")
    with OhifSite(e2e_server.url, "wadors", stack_retrieve=htj2k_progressive()) as site:
        page = browser.new_page()
        watch = PageWatch(e2e_server.url)
        watch.attach(page)
        frames: list[FrameResponse] = []

        def on_response(response: Any) -> None:
            if "/frames/" not in response.url:
                return
            part = None
            try:
                head = response.body()[:400].decode("latin-1")
                part = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                             if line.lower().startswith("content-type:")), None)
            except Exception:  # a body the browser no longer holds: the headers still tell
                pass
            frames.append(FrameResponse(response.url, response.status, response.request.headers.get("range"),
                                        response.headers.get("content-type", ""),
                                        response.headers.get("content-range"), part))

        page.on("response", on_response)
        try:
            yield Tab(page, watch, site), frames
        finally:
            page.close()


def test_ohif_draws_htj2k_frames_fetched_in_byte_ranges(progressive_tab: tuple[Tab, list[FrameResponse]],
                                                       e2e_server: Corpus) -> None:
    tab, frames = progressive_tab
    case = e2e_server.cases["ct"]
    tab.page.goto(f"{tab.site.url}/viewer?StudyInstanceUIDs={case.study_uid}")
    wait_for(tab, "performance.getEntriesByName('dicomweb-first-image').length > 0", timeout_ms=90_000)
    stats = tab.page.evaluate(CANVAS_STATS)
    assert stats is not None and stats["std"] > 10 and stats["levels"] > 16, stats
    tab.watch.wait_quiet(tab.page)
    assert frames, "OHIF fetched no frames"
    htj2k = [f for f in frames if 'type="image/jphc"' in f.content_type]
    assert htj2k, [f.content_type for f in frames[:5]]
    partial = [f for f in htj2k if f.status == 206]
    assert partial, [(f.status, f.range) for f in htj2k[:5]]
    first = partial[0]
    assert first.range == "bytes=0-16383" and first.content_range and first.content_range.startswith("bytes 0-16383/")
    assert first.part_type == f"image/jphc; transfer-syntax={RPCL}"
    # The rest of the same frames was asked for from where the first piece ended.
    assert any(f.range == "bytes=16384-" and f.status == 206 for f in htj2k)
    assert_clean(tab)
