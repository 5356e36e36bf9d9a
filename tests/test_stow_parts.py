"""STOW bodies split into part files as they arrive: what is stored, and that
no part file outlives its request."""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests import dicomgen
from tests.httpclient import failed, json_of, multipart_body, referenced, split_multipart, stow
from tests.inprocess import InProcessServer
from tests.server import ServerProcess
from tests.stowload import wait_for

ACCEPT_JSON = {"Accept": "application/dicom+json"}


def _spool(server: ServerProcess) -> Path:
    return Path(server.data_dir) / "spool"


def _spool_empties(server: ServerProcess) -> None:
    wait_for(lambda: not os.listdir(_spool(server)), 10)


def _in_pieces(body: bytes) -> Iterator[bytes]:
    """Pieces of 1 to 13 bytes: every delimiter ends up split somewhere."""
    pos, size = 0, 1
    while pos < len(body):
        yield body[pos:pos + size]
        pos += size
        size = size % 13 + 1


def _retrieve(url: str, instance: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(instance), stop_before_pixels=True)
    response = requests.get(f"{url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                            f"/instances/{ds.SOPInstanceUID}",
                            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert response.status_code == 200
    [(_, data)] = split_multipart(response)
    return data


@pytest.fixture
def small_cap(tmp_path: Path) -> Iterator[ServerProcess]:
    """An embedded-store server that refuses bodies over 1 MB."""
    with ServerProcess(str(tmp_path / "data"), str(tmp_path / "server.log"), "--max-request-size", "1M") as proc:
        yield proc


def test_a_body_sent_in_tiny_chunks_stores_identical_bytes(server: ServerProcess) -> None:
    study = generate_uid()
    instances = list(dicomgen.ct_series(3, study_uid=study, size=32))
    body, boundary = multipart_body(instances)
    # A generator body is sent with chunked transfer coding: twisted.web hands
    # every HTTP chunk to the request on its own, however TCP groups them.
    response = requests.post(server.url + "/studies", data=_in_pieces(body), headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}', **ACCEPT_JSON})
    assert response.status_code == 200, response.text
    assert len(referenced(json_of(response))) == 3
    for sent in instances:
        assert _retrieve(server.url, sent) == sent
    _spool_empties(server)


def test_no_part_file_is_left_after_stored_failed_and_unchanged_parts(server: ServerProcess) -> None:
    study = generate_uid()
    instance = dicomgen.ct_instance(study, generate_uid(), 1, size=32)
    response = stow(server.url, [instance, b"not DICOM at all"])
    assert response.status_code == 202
    assert len(failed(json_of(response))) == 1
    _spool_empties(server)
    assert stow(server.url, [instance]).status_code == 200  # the same bytes again: unchanged
    _spool_empties(server)


def test_a_body_with_a_preamble_is_still_stored(server: ServerProcess) -> None:
    study = generate_uid()
    instance = dicomgen.ct_instance(study, generate_uid(), 1, size=32)
    body, boundary = multipart_body([instance])
    response = requests.post(server.url + "/studies", data=b"a preamble\r\n" + body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}', **ACCEPT_JSON})
    assert response.status_code == 200, response.text
    assert len(referenced(json_of(response))) == 1
    assert _retrieve(server.url, instance) == instance
    _spool_empties(server)


def test_a_malformed_part_header_still_gets_the_readers_reason(server: ServerProcess) -> None:
    body = b"--b\r\nthis is no header\r\n\r\nDATA\r\n--b--\r\n"
    response = requests.post(server.url + "/studies", data=body, headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=b', **ACCEPT_JSON})
    assert response.status_code == 400
    assert "malformed part header" in response.text
    _spool_empties(server)


def test_part_files_are_removed_after_a_body_refused_as_too_large(tmp_path: Path) -> None:
    # In this process (tests/inprocess.py): the same request class and cap.
    instances = list(dicomgen.ct_series(8, size=256))  # about 1 MB
    body, boundary = multipart_body(instances + instances)
    with InProcessServer(str(tmp_path / "data"), "--max-request-size", "1M") as server:
        # Without a Content-Length the cap is only found out while receiving,
        # after some parts have been written.
        response = server.client.post("/studies", data=(body[i:i + 65536] for i in range(0, len(body), 65536)),
                                      headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                                               f"boundary={boundary}", **ACCEPT_JSON})
        assert response.status_code == 413
        assert "byte limit" in response.text
        assert os.listdir(tmp_path / "data" / "spool") == []
        assert server.client.get("/health").status_code == 200


def test_part_files_are_removed_when_the_client_goes_away_mid_body(small_cap: ServerProcess) -> None:
    body, boundary = multipart_body(list(dicomgen.ct_series(3, size=128)))
    head = (f"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}\r\n\r\n').encode()
    with socket.create_connection(("127.0.0.1", small_cap.port)) as sock:
        sock.sendall(head + body[:len(body) * 2 // 3])
        wait_for(lambda: len(os.listdir(_spool(small_cap))) >= 2, 10)  # parts received, one still open
    _spool_empties(small_cap)
    assert requests.get(small_cap.url + "/health").status_code == 200


def test_part_files_left_by_a_crash_are_removed_at_startup(tmp_path: Path) -> None:
    spool = tmp_path / "data" / "spool"
    spool.mkdir(parents=True)
    (spool / "part-left-by-a-crash").write_bytes(b"never acknowledged")
    with ServerProcess(str(tmp_path / "data"), str(tmp_path / "server.log")):
        assert os.listdir(spool) == []
