"""Response bodies of bytes and stored-file slices, sent zero-copy on plain TCP.

These run a real twisted.web Site on a loopback port in the test process and
read it with a raw socket in a thread, so the reactor keeps serving.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.web import resource, server

from dicomweb.twistedtypes import global_reactor
from dicomweb.web import sendfile
from dicomweb.web.sendfile import FileSlice, Piece

reactor = global_reactor()

BLOB = os.urandom(3 << 20) + b"tail"


class _Body(resource.Resource):
    isLeaf = True

    def __init__(self, pieces: list[Piece], announce_length: bool = False) -> None:
        super().__init__()
        self.pieces = pieces
        self.announce_length = announce_length
        self.finished: list[Deferred[None]] = []

    def render_GET(self, request: server.Request) -> Any:
        async def go() -> None:
            await sendfile.send(request, self.pieces, _read, announce_length=self.announce_length)
            if not request._disconnected:
                request.finish()

        self.finished.append(Deferred.fromCoroutine(go()))
        return server.NOT_DONE_YET


async def _read(piece: FileSlice) -> AsyncIterator[bytes]:
    assert piece.path is not None
    with open(piece.path, "rb") as fp:
        fp.seek(piece.offset)
        remaining = piece.length
        while remaining:
            data = fp.read(min(remaining, 65536))
            if not data:
                return
            remaining -= len(data)
            yield data


@pytest.fixture
def blob_file(tmp_path: Path) -> str:
    path = tmp_path / "blob.dcm"
    path.write_bytes(BLOB)
    return str(path)


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    calls: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        n = real(out_fd, in_fd, offset, count)
        calls.append(n)
        return n

    monkeypatch.setattr(os, "sendfile", counting)
    yield calls


def _serve(body: _Body) -> Any:
    return reactor.listenTCP(0, server.Site(body), interface="127.0.0.1")  # type: ignore[arg-type]  # Twisted: ServerFactory[P] is invariant in P; Site is ServerFactory[HTTPChannel]


def _fetch(port: int, rcvbuf: int | None = None, pause: float = 0.0, stop_after: int | None = None,
           proto: str = "HTTP/1.1") -> bytes:
    """The raw response (headers and body) of ``GET /``, read slowly if asked."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET / {proto}\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    received = bytearray()
    sock.settimeout(30)
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:  # an aborted response
            break
        if not data:
            break
        received += data
        if pause:
            time.sleep(pause)
        if stop_after is not None and len(received) >= stop_after:
            break
    sock.close()
    return bytes(received)


def _split(raw: bytes) -> tuple[dict[str, str], bytes]:
    """Headers and body; a chunked body is decoded (and must be complete)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode().lower()] = value.decode().strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return headers, body


def _dechunk(body: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end], 16)
        if size == 0:
            assert body[end:] == b"\r\n\r\n", "a chunked body ends with the last chunk"
            return bytes(out)
        out += body[end + 2:end + 2 + size]
        assert body[end + 2 + size:end + 4 + size] == b"\r\n"
        pos = end + 4 + size


async def _served(body: _Body, *fetch_args: Any, **fetch_kw: Any) -> tuple[dict[str, str], bytes]:
    """Serve ``body`` on a loopback port, fetch it once, stop listening."""
    port = _serve(body)
    try:
        return _split(await deferToThread(_fetch, port.getHost().port, *fetch_args, **fetch_kw))
    finally:
        await port.stopListening()


def _pieces(path: str) -> tuple[list[Piece], bytes]:
    pieces: list[Piece] = [b"--head--", FileSlice(path, 0, len(BLOB)), b"--mid--",
                           FileSlice(path, 1000, 70_000), b"--end--"]
    expected = b"--head--" + BLOB + b"--mid--" + BLOB[1000:71_000] + b"--end--"
    return pieces, expected


@pytest_twisted.ensureDeferred
async def test_bytes_and_file_slices_arrive_whole_and_in_order_through_sendfile(
        blob_file: str, sendfile_calls: list[int]) -> None:
    pieces, expected = _pieces(blob_file)
    headers, body = await _served(_Body(pieces))
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    assert body == expected
    assert sum(sendfile_calls) == len(BLOB) + 70_000


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(("proto", "announce"), [("HTTP/1.0", False), ("HTTP/1.1", True)])
async def test_a_single_object_or_an_http_1_0_client_gets_a_content_length(
        blob_file: str, sendfile_calls: list[int], proto: str, announce: bool) -> None:
    pieces, expected = _pieces(blob_file)
    headers, body = await _served(_Body(pieces, announce_length=announce), proto=proto)
    assert headers["content-length"] == str(len(expected)) and "transfer-encoding" not in headers
    assert body == expected
    assert sum(sendfile_calls) == len(BLOB) + 70_000


@pytest_twisted.ensureDeferred
async def test_a_slow_reader_with_a_small_buffer_still_gets_every_byte(blob_file: str, sendfile_calls: list[int]) -> None:
    pieces, expected = _pieces(blob_file)
    _, body = await _served(_Body(pieces), 8192, 0.0005)
    assert body == expected
    assert len(sendfile_calls) > 1  # the socket filled up and the sender waited for it


@pytest_twisted.ensureDeferred
async def test_switched_off_the_same_bytes_go_through_user_space(
        blob_file: str, sendfile_calls: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sendfile, "enabled", False)
    pieces, expected = _pieces(blob_file)
    _, body = await _served(_Body(pieces))
    assert body == expected
    assert sendfile_calls == []


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_ends_the_response_without_an_error(blob_file: str) -> None:
    big = FileSlice(blob_file, 0, len(BLOB))
    served = _Body([b"x", big, big, big, big])
    port = _serve(served)
    try:
        await deferToThread(_fetch, port.getHost().port, 8192, 0, 100_000)
        await served.finished[0]  # ends; no exception escapes
    finally:
        await port.stopListening()
    assert blob_file not in _open_paths()  # the stored file was closed


@pytest_twisted.ensureDeferred
async def test_a_stored_file_shorter_than_its_record_aborts_the_connection(blob_file: str) -> None:
    headers, body = await _served(_Body([FileSlice(blob_file, 0, len(BLOB) + 10)], announce_length=True))
    assert int(headers["content-length"]) == len(BLOB) + 10
    assert len(body) < len(BLOB) + 10  # the client can tell the body is broken


def _open_paths() -> list[str]:
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed while listing
            pass
    return paths


def _two_requests_on_one_connection(port: int) -> list[bytes]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(30)
    bodies = []
    reader = sock.makefile("rb")
    for _ in range(2):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        headers = {}
        assert reader.readline().startswith(b"HTTP/1.1 200")
        while (line := reader.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            headers[name.lower()] = value.strip()
        assert headers["transfer-encoding"] == "chunked"
        body = bytearray()
        while (size := int(reader.readline(), 16)) > 0:
            body += reader.read(size)
            assert reader.read(2) == b"\r\n"
        assert reader.read(2) == b"\r\n"
        bodies.append(bytes(body))
    sock.close()
    return bodies


@pytest_twisted.ensureDeferred
async def test_the_connection_stays_usable_for_the_next_request(blob_file: str, sendfile_calls: list[int]) -> None:
    pieces, expected = _pieces(blob_file)
    port = _serve(_Body(pieces))
    try:
        bodies = await deferToThread(_two_requests_on_one_connection, port.getHost().port)
    finally:
        await port.stopListening()
    assert bodies == [expected, expected]
    assert sum(sendfile_calls) == 2 * (len(BLOB) + 70_000)
