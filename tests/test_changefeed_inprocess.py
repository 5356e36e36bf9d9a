"""The change feed's waiting, in process (tests/inprocess.py): the clock only
moves when a test moves it, so "woken by the STOW, not by a timer" is exact."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.uid import generate_uid
from twisted.internet.defer import Deferred, ensureDeferred

from tests import dicomgen
from tests.httpclient import multipart_body
from tests.inprocess import InProcessServer, Response


@pytest.fixture
def server(tmp_path: os.PathLike[str]) -> Iterator[InProcessServer]:
    with InProcessServer(os.path.join(tmp_path, "data"), "--changefeed-waiters", "1") as server:
        yield server


def _stow(server: InProcessServer, sop: str) -> Response:
    body, boundary = multipart_body([dicomgen.ct_instance(generate_uid(), generate_uid(), 1, size=16, sop_uid=sop)])
    return server.client.post("/studies", data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})


def _start(server: InProcessServer, path: str) -> Deferred[Any]:
    """Send a request and let it run as far as it can without the clock moving."""
    d: Deferred[Any] = ensureDeferred(server.client._request("GET", server.url + path, {}, None))
    server.network.settle()
    return d


def test_a_waiting_request_is_woken_by_the_stow_not_by_a_timer(server: InProcessServer) -> None:
    began = server.reactor.seconds()
    waiting = _start(server, "/changefeed?offset=0&timeout=60&includemetadata=false")
    assert not waiting.called
    sop = generate_uid()
    assert _stow(server, sop).status_code == 200
    response = server.network.run(waiting)
    assert response.status_code == 200
    assert [(e["Sequence"], e["SopInstanceUid"], e["State"]) for e in response.json()] == [(1, sop, "Current")]
    assert server.reactor.seconds() == began


def test_a_wait_with_nothing_new_ends_after_its_timeout_with_an_empty_page(server: InProcessServer) -> None:
    began = server.reactor.seconds()
    response = server.client.get("/changefeed?offset=0&timeout=12.5", let_time_pass=True)
    assert response.status_code == 200 and response.json() == []
    assert server.reactor.seconds() - began == pytest.approx(12.5)


def test_one_waiter_more_than_the_bound_is_503_and_the_first_still_gets_its_event(server: InProcessServer) -> None:
    first = _start(server, "/changefeed?timeout=60")
    refused = server.client.get("/changefeed?timeout=60")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "1 change-feed waiters" in refused.text
    assert server.client.get("/changefeed").json() == []  # no wait, no bound
    sop = generate_uid()
    assert _stow(server, sop).status_code == 200
    assert [e["SopInstanceUid"] for e in server.network.run(first).json()] == [sop]
    assert "dicomweb_changefeed_waiters 0.0" in server.client.get("/metrics").text


def test_entries_link_bulk_data_on_the_public_url_and_time_in_utc(server: InProcessServer) -> None:
    sop = generate_uid()
    assert _stow(server, sop).status_code == 200
    [entry] = server.client.get("/changefeed").json()
    assert entry["Timestamp"].endswith("Z") and entry["Timestamp"][10] == "T"
    assert entry["Metadata"]["7FE00010"]["BulkDataURI"].startswith(server.url + "/studies/")
    latest = server.client.get("/changefeed/latest?includemetadata=false").json()
    assert latest == {k: v for k, v in entry.items() if k != "Metadata"}
