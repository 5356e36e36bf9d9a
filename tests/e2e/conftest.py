"""Fixtures of the OHIF end-to-end tests (marker ``e2e``).

- ``e2e_server``: our server (``twistd -n dicomweb``, embedded store) on a
  loopback port, holding the corpus below and nothing else.
- ``ohif``: OHIF's ``dist/`` on another loopback port (so CORS is real), with an
  ``app-config.js`` for ``wadors`` or ``wadouri`` (the fixture's parameter).
- ``browser``: one headless Debian Chromium (Playwright, fresh profile) per session.
- ``page``: a new tab per test whose console and network traffic are recorded;
  a failing test leaves a screenshot and that record in ``test-artifacts/``.

Skipped (with the reason) when Chromium, Playwright or the OHIF build are
missing; ``scripts/test`` installs all three.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.dicomgen import ct_series, sample_file
from tests.e2e.browser import FIRST_IMAGE_PROBE, PageWatch, chromium_path, launch
from tests.e2e.ohif import MODES, OHIF_DIST, OhifSite
from tests.httpclient import stow
from tests.server import REPO, ServerProcess

ARTIFACTS = os.path.join(REPO, "test-artifacts")
E2E_DIR = os.path.dirname(os.path.abspath(__file__))

# OHIF shows an onboarding tour over the viewport on the first visit.
SKIP_TOURS = "try { localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); } catch (e) {}"

FIGURES: list[str] = []  # printed at the end of the run (pytest_terminal_summary)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end tests with real clients (OHIF in headless Chromium)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(E2E_DIR):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.write_sep("=", "OHIF end-to-end figures")
        for text in FIGURES:
            terminalreporter.write_line(text)


# -- the corpus ---------------------------------------------------------------


@dataclass(frozen=True)
class StudyCase:
    """One stored study and what OHIF's study list should show for it."""

    key: str
    study_uid: str
    patient_name: str  # as OHIF shows it: "Family, Given"
    study_date: str  # as OHIF shows it: 02-Jan-2024
    modality: str
    series: int
    instances: int
    frames: int  # of the first instance


@dataclass
class Corpus:
    url: str
    cases: dict[str, StudyCase] = field(default_factory=dict)


def _ohif_name(value: Any) -> str:
    name = pydicom.valuerep.PersonName(str(value or ""))
    return ", ".join(p for p in (name.family_name, name.given_name) if p)


def _ohif_date(value: str) -> str:
    import datetime

    return datetime.datetime.strptime(value, "%Y%m%d").strftime("%d-%b-%Y")


def _case(key: str, parts: list[bytes]) -> StudyCase:
    first = pydicom.dcmread(io.BytesIO(parts[0]), stop_before_pixels=True)
    series = {pydicom.dcmread(io.BytesIO(p), stop_before_pixels=True).SeriesInstanceUID for p in parts}
    return StudyCase(key, first.StudyInstanceUID, _ohif_name(first.get("PatientName")), _ohif_date(first.StudyDate),
                     first.Modality, len(series), len(parts), int(first.get("NumberOfFrames", 1) or 1))


# The objects the viewer tests open: (key, how they are made).
SAMPLE_OBJECTS = {
    "j2k": "MR2_J2KR.dcm",  # MR 1024x1024, JPEG 2000 lossless
    "multiframe": "examples_ybr_color.dcm",  # US 30 frames 320x240, JPEG baseline YBR_FULL_422
    "j2k-multiframe": "emri_small_jpeg_2k_lossless.dcm",  # Enhanced MR, 10 frames, JPEG 2000 lossless
}


@pytest.fixture(scope="session")
def e2e_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    base = tmp_path_factory.mktemp("e2e-server")
    proc = ServerProcess(str(base / "data"), str(base / "server.log"), "--max-request-size", "256M")
    with proc:
        corpus = Corpus(proc.url)
        ct = list(ct_series(60, size=512, study_uid=generate_uid(), patient_name="E2E^Computed",
                            patient_id="E2E-CT", study_date="20240102"))
        for start in range(0, len(ct), 20):
            response = stow(proc.url, ct[start:start + 20])
            assert response.status_code == 200, response.text
        corpus.cases["ct"] = _case("ct", ct)
        for key, name in SAMPLE_OBJECTS.items():
            with open(sample_file(name), "rb") as fp:
                data = fp.read()
            response = stow(proc.url, [data])
            assert response.status_code == 200, response.text
            corpus.cases[key] = _case(key, [data])
        yield corpus
    log = proc.log()
    if os.path.isdir(ARTIFACTS) or "Traceback" in log:
        os.makedirs(ARTIFACTS, exist_ok=True)
        shutil.copy(str(base / "server.log"), os.path.join(ARTIFACTS, "e2e-server.log"))
    assert "Traceback" not in log, log[-4000:]


# -- OHIF and the browser -----------------------------------------------------


def _missing(reason: str) -> NoReturn:
    """Skip on a developer machine without the tool; fail in CI, where
    scripts/test installs it (a silent skip there would hide a broken set-up)."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session", params=MODES)
def ohif(request: pytest.FixtureRequest, e2e_server: Corpus) -> Iterator[OhifSite]:
    if not os.path.exists(os.path.join(OHIF_DIST, "index.html")):
        _missing("OHIF build missing: run `npm ci --ignore-scripts` in tests/ohif (scripts/test does)")
    with OhifSite(e2e_server.url, request.param) as site:
        yield site


@pytest.fixture(scope="session")
def playwright() -> Iterator[Any]:
    """The one Playwright driver of the session: its sync API refuses a second
    one while the first runs, so every browser of the e2e tests comes from it."""
    if chromium_path() is None:
        _missing("no Chromium: run scripts/install-system-deps (Debian package chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install '.[test]' installs playwright")
    with sync_api.sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Any) -> Iterator[Any]:
    executable = chromium_path()
    assert executable is not None  # the playwright fixture skipped otherwise
    context, profile = launch(playwright, executable)
    context.add_init_script(FIRST_IMAGE_PROBE)
    context.add_init_script(SKIP_TOURS)
    context.set_default_timeout(60_000)
    try:
        yield context
    finally:
        context.close()
        shutil.rmtree(profile, ignore_errors=True)


@dataclass
class Tab:
    page: Any
    watch: PageWatch
    site: OhifSite


def artifact_name(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::", 1)[-1]).strip("_")


@pytest.fixture
def tab(request: pytest.FixtureRequest, browser: Any, ohif: OhifSite, e2e_server: Corpus) -> Iterator[Tab]:
    page = browser.new_page()
    watch = PageWatch(e2e_server.url)
    watch.attach(page)
    yield Tab(page, watch, ohif)
    report = getattr(request.node, "report_call", None)
    if report is None or report.failed:
        os.makedirs(ARTIFACTS, exist_ok=True)
        name = os.path.join(ARTIFACTS, artifact_name(request.node.nodeid))
        try:
            page.screenshot(path=name + ".png", full_page=True)
        except Exception as exc:  # the page may be gone; the log still helps
            watch.console.append(("screenshot", repr(exc)))
        with open(name + ".txt", "w", encoding="utf-8") as fp:
            fp.write(f"{request.node.nodeid}\nOHIF {ohif.url} ({ohif.mode}), server {e2e_server.url}\n\n")
            fp.write(watch.report() + "\n\napp-config.js:\n" + ohif.config_js)
    page.close()
