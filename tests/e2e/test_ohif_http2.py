"""OHIF over https with HTTP/2: the viewer shows an image, and every request
to the server went over h2.

The server listens on an ``ssl:`` port with a certificate of a throwaway CA;
this test's own Chromium context accepts it (Playwright's
``ignore_https_errors``, the ``--ignore-certificate-errors`` of the page's
context). The protocol each response came over is read from Chromium's
network log (DevTools ``Network.responseReceived``: ``response.protocol``)
and from the page's resource timing entries (``nextHopProtocol``, visible
across origins because the server sends ``Timing-Allow-Origin``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from tests.dicomgen import ct_series
from tests.e2e.browser import CANVAS_STATS, FIRST_IMAGE_PROBE, PageWatch, chromium_path, launch
from tests.e2e.conftest import SKIP_TOURS, Tab, _missing
from tests.e2e.ohif import OHIF_DIST, OhifSite
from tests.e2e.test_ohif import assert_clean, wait_for
from tests.httpclient import stow
from tests.security_fixtures import write_tls_files
from tests.server import ServerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(name="tls_server", scope="module")
def tls_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    base = tmp_path_factory.mktemp("e2e-h2")
    tls = write_tls_files(base)
    proc = ServerProcess(str(base / "data"), str(base / "server.log"), "--port",
                         f"ssl:0:interface=127.0.0.1:privateKey={tls.key}:certKey={tls.cert}")
    proc.scheme, proc.verify = "https", tls.ca
    with proc:
        study = generate_uid()
        response = stow(proc.url, list(ct_series(10, size=256, study_uid=study, patient_name="E2E^Secure")),
                        verify=tls.ca)
        assert response.status_code == 200, response.text
        yield proc, study
    assert "Traceback" not in proc.log(), proc.log()[-4000:]


def test_ohif_over_https_uses_http2(tls_server: tuple[ServerProcess, str], tmp_path: Path) -> None:
    server, study = tls_server
    executable = chromium_path()
    if executable is None or not (Path(OHIF_DIST) / "index.html").exists():
        _missing("Chromium or the OHIF build missing: scripts/test installs both")
    sync_api = pytest.importorskip("playwright.sync_api")
    protocols: dict[str, str] = {}

    def on_response(params: dict[str, Any]) -> None:
        response = params["response"]
        if response["url"].startswith(server.url):
            protocols[response["url"]] = response.get("protocol", "")

    with OhifSite(server.url, "wadors") as site, sync_api.sync_playwright() as playwright:
        context, profile = launch(playwright, executable, ignore_https_errors=True)
        try:
            context.add_init_script(FIRST_IMAGE_PROBE)
            context.add_init_script(SKIP_TOURS)
            page = context.new_page()
            devtools = context.new_cdp_session(page)
            devtools.on("Network.responseReceived", on_response)
            devtools.send("Network.enable")
            watch = PageWatch(server.url)
            watch.attach(page)
            tab = Tab(page, watch, site)
            page.goto(f"{site.url}/viewer?StudyInstanceUIDs={study}")
            wait_for(tab, "performance.getEntriesByName('dicomweb-first-image').length > 0", timeout_ms=90_000)
            stats = page.evaluate(CANVAS_STATS)
            assert stats is not None and stats["std"] > 10, stats
            watch.wait_quiet(page)
            timing = page.evaluate("""url => performance.getEntriesByType('resource')
                .filter(e => e.name.startsWith(url)).map(e => e.nextHopProtocol)""", server.url)
            assert_clean(tab)
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)
    assert any("/frames/" in url for url in protocols), sorted(protocols)
    assert set(protocols.values()) == {"h2"}, protocols
    # The server's CORS answers carry Timing-Allow-Origin, so the page sees the protocol too.
    assert timing and set(timing) == {"h2"}, timing
    print(f"OHIF over https: {len(protocols)} responses from the server, protocols {sorted(set(protocols.values()))},"
          f" nextHopProtocol {sorted(set(timing))}")
    assert '"GET /studies' in server.log() and " HTTP/2\" 200" in server.log()
