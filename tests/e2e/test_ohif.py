"""The OHIF Viewer (npm @ohif/app 3.13, headless Chromium) against our server.

Each test runs in both OHIF modes (``imageRendering: 'wadors'`` and
``'wadouri'``; the ``ohif`` fixture's parameter). What OHIF sends is listed
in ../shared/DESIGN.md ("What clients send").
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import pytest

from tests.e2e.browser import CANVAS_STATS, KNOWN_OHIF_CONSOLE_NOISE, NetEntry
from tests.e2e.conftest import ARTIFACTS, FIGURES, Corpus, StudyCase, Tab

pytestmark = pytest.mark.e2e
PlaywrightTimeout = pytest.importorskip("playwright.sync_api").TimeoutError

ROWS = "tbody tr[aria-selected]"  # the study list's data rows (not the filter row)


def wait_for(tab: Tab, expression: str, timeout_ms: int = 60_000) -> None:
    """Wait until ``expression`` is true in the page; fail at once when a request to the server fails.

    A missing route or a CORS refusal would otherwise only show as a timeout.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    failed: list[NetEntry] = []
    while not failed:
        try:
            tab.page.wait_for_function(expression, timeout=500)
            return
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise
        failed = [r for r in tab.watch.bad_requests() if r.url.startswith(tab.watch.server_url)]
    pytest.fail(f"waiting for {expression!r}, requests to the server failed:\n"
                + "\n".join(r.line() for r in failed), pytrace=False)


def study_rows(tab: Tab) -> list[list[str]]:
    """The study list as cells: [patient, date, modalities, description, instances]."""
    rows = tab.page.locator(ROWS)
    out = []
    for i in range(rows.count()):
        cells = rows.nth(i).locator("td")
        out.append([cells.nth(j).inner_text().strip() for j in range(min(cells.count(), 5))])
    return out


def wait_for_rows(tab: Tab, count: int) -> list[list[str]]:
    wait_for(tab, f"document.querySelectorAll({json.dumps(ROWS)}).length === {count}")
    return study_rows(tab)


def assert_clean(tab: Tab) -> None:
    """No failed request (any origin), no console error beyond the documented OHIF noise."""
    bad = tab.watch.bad_requests()
    assert not bad, "failed requests:\n" + "\n".join(r.line() for r in bad)
    errors = tab.watch.console_errors()
    assert not errors, ("console errors (allow-list: "
                        + "; ".join(why for _p, why in KNOWN_OHIF_CONSOLE_NOISE) + "):\n" + "\n".join(errors))


# -- study list ---------------------------------------------------------------


def test_study_list_shows_stored_studies(tab: Tab, e2e_server: Corpus) -> None:
    tab.page.goto(tab.site.url + "/")
    rows = wait_for_rows(tab, len(e2e_server.cases))
    by_patient = {row[0]: row for row in rows}
    for case in e2e_server.cases.values():
        row = next((r for r in rows if r[1].startswith(case.study_date) and r[2] == case.modality
                    and r[0] == case.patient_name), None)
        assert row is not None, f"{case.key}: no row {case.patient_name!r} {case.study_date} {case.modality} in {rows}"
        assert row[4] == str(case.instances), (case.key, row)
    assert by_patient["E2E, Computed"][3] == "Generated study"
    tab.watch.wait_quiet(tab.page)
    # One study search, with OHIF's include fields, answered by our server.
    searches = [r for r in tab.watch.server_requests() if "/studies?" in r.url]
    assert searches and all(r.status == 200 for r in searches), [r.line() for r in searches]
    assert_clean(tab)


def test_study_list_filters_by_patient_name(tab: Tab, e2e_server: Corpus) -> None:
    page = tab.page
    page.goto(tab.site.url + "/")
    wait_for_rows(tab, len(e2e_server.cases))
    name_filter = page.locator("thead input, tbody tr:not([aria-selected]) input").first
    # OHIF filters the rows it has at once, then asks the server (debounced):
    # wait for that search, sent as a PN wildcard, before reading the rows.
    for typed, key in (("compressed", "j2k"), ("e2e", "ct")):  # lower case: PN wildcards ignore case
        with page.expect_request(lambda r, typed=typed: f"PatientName=*{typed}*" in r.url) as search:
            name_filter.fill(typed)
        assert search.value.url.startswith(e2e_server.url)
        shown = json.dumps(e2e_server.cases[key].patient_name)
        wait_for(tab, f"document.querySelector({json.dumps(ROWS)})?.innerText.includes({shown})")
        tab.watch.wait_quiet(page, quiet_ms=800)
        rows = wait_for_rows(tab, 1)
        assert rows[0][0] == e2e_server.cases[key].patient_name, rows
    assert_clean(tab)


# -- viewer -------------------------------------------------------------------


def open_viewer(tab: Tab, case: StudyCase) -> dict[str, Any]:
    """Open the viewer on one study; return the canvas statistics once the image shows."""
    page = tab.page
    page.goto(f"{tab.site.url}/viewer?StudyInstanceUIDs={case.study_uid}")
    wait_for(tab, "performance.getEntriesByName('dicomweb-first-image').length > 0", timeout_ms=90_000)
    stats: dict[str, Any] | None = page.evaluate(CANVAS_STATS)
    assert stats is not None, "no viewport canvas"
    return stats


def assert_thumbnails(tab: Tab, case: StudyCase) -> None:
    """Every series of the study has a loaded thumbnail image in the study browser.

    OHIF draws them into ``data:`` URLs (``thumbnailRendering: 'wadors'``) or shows
    the server's ``/thumbnail`` JPEG through a ``blob:`` URL ('thumbnail').
    """
    wait_for(
        tab, "[...document.querySelectorAll('img')].filter(i => /^(data|blob):/.test(i.src)"
        f" && i.complete && i.naturalWidth > 0).length >= {case.series}", timeout_ms=30_000)


@pytest.mark.parametrize("key", ["ct", "j2k", "multiframe", "j2k-multiframe"])
def test_viewer_shows_the_image(tab: Tab, e2e_server: Corpus, key: str) -> None:
    case = e2e_server.cases[key]
    stats = open_viewer(tab, case)
    # A real image: not one flat colour, many grey levels (a failed load stays black).
    assert stats["std"] > 10 and stats["levels"] > 16, stats
    assert_thumbnails(tab, case)
    tab.watch.wait_quiet(tab.page)
    pixel_requests = [r for r in tab.watch.server_requests() if "/frames/" in r.url or "/wado?" in r.url]
    assert pixel_requests, "OHIF fetched no pixel data from the server"
    if tab.site.mode == "wadouri":
        assert any("/wado?" in r.url for r in pixel_requests)
    else:
        assert any("/frames/" in r.url for r in pixel_requests)
    if key == "ct":
        record_timing(tab, case)
    assert_clean(tab)


def record_timing(tab: Tab, case: StudyCase) -> None:
    """Viewer opened -> first image, from the page's performance timeline; and every request made."""
    page = tab.page
    marks = page.evaluate("""() => Object.fromEntries(performance.getEntriesByType('mark')
        .filter(m => m.name.startsWith('dicomweb-')).map(m => [m.name, m.startTime]))""")
    first_pixels = page.evaluate(r"""() => {
        const r = performance.getEntriesByType('resource').filter(e => /\/frames\/|\/wado\?/.test(e.name));
        return r.length ? Math.min(...r.map(e => e.responseEnd)) : null; }""")
    ohif_times = {m.group(1): float(m.group(2)) for _kind, text in tab.watch.console
                  if (m := re.match(r"(\w+): ([\d.]+) ms", text))}
    server = tab.watch.server_requests()
    by_kind: dict[str, int] = {}
    for r in server:
        path = r.url[len(tab.watch.server_url):].split("?")[0]
        kind = re.sub(r"[\d.]{10,}", "{uid}", path) + ("?" if "?" in r.url else "")
        by_kind[f"{r.status} {r.method} {kind}"] = by_kind.get(f"{r.status} {r.method} {kind}", 0) + 1
    summary = [
        f"OHIF {tab.site.mode}: {case.instances}-instance CT {case.study_uid}",
        f"  viewer opened -> first image on the canvas: {marks.get('dicomweb-first-image', float('nan')):.0f} ms"
        f" (Cornerstone IMAGE_RENDERED at {marks.get('dicomweb-image-rendered', float('nan')):.0f} ms,"
        f" first pixel response complete at {first_pixels or float('nan'):.0f} ms)",
        f"  OHIF's own timers: {', '.join(f'{k} {v:.0f} ms' for k, v in ohif_times.items())}",
        f"  {len(server)} requests to the server ({len(tab.watch.requests) - len(server)} to the OHIF site):",
        *[f"    {count:3d} x {kind}" for kind, count in sorted(by_kind.items())],
    ]
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, f"ohif-{tab.site.mode}-ct{case.instances}-requests.txt")
    with open(path, "w", encoding="utf-8") as fp:
        fp.write("\n".join(summary) + f"\n\nall requests, in order ({time.strftime('%Y-%m-%d %H:%M:%S')}):\n")
        fp.write("\n".join(r.line() for r in tab.watch.requests) + "\n")
    FIGURES.extend([*summary, f"  (full list: {os.path.relpath(path)})"])
    print("\n".join(summary))
