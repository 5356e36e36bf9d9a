"""Every over-long request head gets an answer (414 or 431) before the close."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest


def _raw(url: str, head: bytes) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        try:
            sock.sendall(head)
        except OSError:
            pass  # the server may answer and close before reading everything
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    return int(answer[9:12])


@pytest.mark.parametrize("size", [17 * 1024, 64 * 1024])
def test_an_over_long_request_line_gets_414(url: str, size: int) -> None:
    answer = _raw(url, b"GET /studies?PatientID=" + b"x" * size + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(answer) == 414
    assert b"request line longer than" in answer


def test_too_many_headers_get_431(url: str) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(600))
    answer = _raw(url, b"GET /studies HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert _status(answer) == 431
    assert b"request headers" in answer


@pytest.mark.parametrize("headers", [
    b"X-Big: " + b"y" * 20000 + b"\r\n",  # one line over the line limit
    b"".join(b"X-H%d: %s\r\n" % (i, b"z" * 1000) for i in range(20)),  # the head over its total
])
def test_too_large_headers_get_431(url: str, headers: bytes) -> None:
    answer = _raw(url, b"GET /studies HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert _status(answer) == 431


def test_a_normal_request_after_a_refused_one_is_served(url: str) -> None:
    _raw(url, b"GET /" + b"x" * 20000 + b" HTTP/1.1\r\n\r\n")
    answer = _raw(url, b"GET /studies HTTP/1.1\r\nHost: x\r\nAccept: application/dicom+json\r\nConnection: close\r\n\r\n")
    assert _status(answer) in (200, 204)
