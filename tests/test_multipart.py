"""The multipart/related reader, on its own."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomweb.io import multipart
from dicomweb.io.multipart import MultipartError, iter_parts
from tests.httpclient import multipart_body


class _Unmappable(io.RawIOBase):
    """A seekable stream with no file descriptor or buffer: read in chunks."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._data.seek(pos, whence)

    def tell(self) -> int:
        return self._data.tell()

    def readinto(self, buffer) -> int:
        return self._data.readinto(buffer)


def _parts(body: bytes, boundary: str, stream: type = io.BytesIO) -> list[tuple[dict[str, str], bytes]]:
    return [(p.headers, body[p.offset:p.offset + p.length]) for p in iter_parts(stream(body), boundary)]


@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=5))
def test_parts_come_back_exactly_as_written(payloads: list[bytes]) -> None:
    body, boundary = multipart_body(payloads)
    assert [data for _, data in _parts(body, boundary)] == payloads


def test_parts_spanning_many_read_chunks_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(multipart, "CHUNK", 7)
    payloads = [b"x" * 100, b"--almost-a-boundary\r\n" * 3, b""]
    body, boundary = multipart_body(payloads, boundary="almost-a-boundary-but-not")
    assert [data for _, data in _parts(body, boundary, _Unmappable)] == payloads


def test_a_preamble_and_transport_padding_are_ignored() -> None:
    body = b"preamble text\r\n--b  \r\nContent-Type: application/dicom\r\n\r\nDATA\r\n--b--\r\nepilogue"
    assert _parts(body, "b") == [({"content-type": "application/dicom"}, b"DATA")]


@pytest.mark.parametrize("body, reason", [
    (b"no delimiter here", "does not start"),
    (b"--b\r\nContent-Type: x\r\n\r\nDATA", "truncated"),
    (b"--b\r\nContent-Type: x", "unterminated"),
    (b"--b\r\nbad header line\r\n\r\nDATA\r\n--b--", "malformed part header"),
])
@pytest.mark.parametrize("stream", [io.BytesIO, _Unmappable])
def test_malformed_bodies_raise_with_a_reason(body: bytes, reason: str, stream: type) -> None:
    with pytest.raises(MultipartError, match=reason):
        _parts(body, "b", stream)


def test_a_body_in_a_real_file_is_searched_in_place(tmp_path) -> None:
    payloads = [b"a" * 5000, b"\r\n--x\r\n", b"b" * 70000]
    body, boundary = multipart_body(payloads)
    path = tmp_path / "body"
    path.write_bytes(b"preamble\r\n" + body)
    with open(path, "rb") as fp:
        parts = list(iter_parts(fp, boundary))
    stored = path.read_bytes()
    assert [stored[p.offset:p.offset + p.length] for p in parts] == payloads
