"""A client that goes away mid-study leaves no work running on the server."""

from __future__ import annotations

import os
import socket
import time

import requests
from pydicom.uid import generate_uid

from tests import dicomgen
from tests.httpclient import stow
from tests.server import ServerProcess

GONE = "the client went away"


def _open_files(pid: int) -> int:
    """Open descriptors, except the SQLite index's: each pool thread (and the
    reactor) opens one connection on first use and keeps it for its life, and
    a retrieve may be the first use of a new pool thread."""
    return sum(1 for path in _fds(pid) if "index.sqlite3" not in path)


def _fds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass  # closed since the listing: not open
    return sorted(out)


def _read_a_little_then_close(port: int, path: str) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # make backpressure bite early
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 'Accept: multipart/related; type="application/dicom"; transfer-syntax=*\r\n\r\n'.encode())
    received = 0
    while received < 200_000:
        data = sock.recv(65536)
        assert data, "the server closed first"
        received += len(data)
    sock.close()


def _wait_for(predicate, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_client_leaving_mid_study_stops_the_stream(server: ServerProcess) -> None:
    study = generate_uid()
    instances = list(dicomgen.ct_series(40, study_uid=study, size=512))  # ~20 MB
    assert stow(server.url, instances).status_code == 200
    assert server.proc is not None
    pid = server.proc.pid
    requests.get(f"{server.url}/health", timeout=5)
    files_before = _open_files(pid)
    already = server.log().count(GONE)
    for _ in range(5):
        _read_a_little_then_close(server.port, f"/studies/{study}")
    # Each abandoned response was stopped (logged), and nothing it opened stays open.
    assert _wait_for(lambda: server.log().count(GONE) >= already + 5), server.log()[-2000:]
    assert _wait_for(lambda: _open_files(pid) <= files_before + 1), (files_before, _fds(pid))
    # The server still answers, and a complete retrieve still works.
    response = requests.get(f"{server.url}/studies/{study}", timeout=60)
    assert response.status_code == 200
    assert len(response.content) > sum(len(i) for i in instances)
