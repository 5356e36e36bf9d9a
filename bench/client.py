"""HTTP client side: sessions, STOW bodies, streamed reads, one error type for "not answered"."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import requests

BOUNDARY = "dicomweb-bench-7b2f0c1e9a"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
DICOM_JSON = "application/dicom+json"
# What OHIF and dicomweb_client send: "as stored", no transcoding on either server.
ACCEPT_INSTANCES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
CHUNK = 1 << 20


class NotAnswered(Exception):
    """The server does not answer this operation (yet): status or content wrong."""


@dataclass
class Target:
    """One server as a client sees it: a name, a DICOMweb root URL, a keep-alive session."""

    name: str
    url: str
    kind: str  # "ours" | "orthanc" | "static"
    session: requests.Session = field(default_factory=lambda: new_session())


def new_session() -> requests.Session:
    s = requests.Session()
    # Both servers can gzip; on loopback that only burns CPU. Ask for identity.
    s.headers["Accept-Encoding"] = "identity"
    return s


def check(resp: requests.Response, ok: Iterable[int] = (200,)) -> requests.Response:
    if resp.status_code not in tuple(ok):
        resp.close()
        raise NotAnswered(f"status {resp.status_code}")
    return resp


PART_HEAD = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()


def part(blob: bytes) -> bytes:
    return PART_HEAD + blob + b"\r\n"


def stow_body(blobs: list[bytes]) -> bytes:
    """The multipart/related body of ``blobs``, copied once (joining ready-made
    parts would copy every instance three times: 19 ms for 20 x 0.5 MB here)."""
    pieces = []
    for blob in blobs:
        pieces += (PART_HEAD, blob, b"\r\n")
    pieces.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(pieces)


def stow(target: Target, blobs: list[bytes] | bytes | LazyMultipart, timeout: float = 600) -> requests.Response:
    """POST /studies; raises NotAnswered unless every instance was stored.
    ``blobs``: the instances, or a body built beforehand (:func:`stow_body`)."""
    body = stow_body(blobs) if isinstance(blobs, list) else blobs
    resp = target.session.post(f"{target.url}/studies", data=body, timeout=timeout,
                               headers={"Content-Type": STOW_TYPE, "Accept": DICOM_JSON})
    check(resp)
    # Orthanc sends an empty FailedSOPSequence ({"vr": "SQ"}); only items count.
    failed = resp.json().get("00081198", {}).get("Value") if resp.content else None
    if failed:
        raise NotAnswered(f"STOW failures: {str(failed)[:200]}")
    return resp


def get(target: Target, path: str, accept: str, params: dict[str, str] | None = None,
        timeout: float = 120) -> requests.Response:
    resp = target.session.get(f"{target.url}{path}", params=params, headers={"Accept": accept}, timeout=timeout)
    return check(resp)


def get_body(target: Target, path: str, params: dict[str, str] | None = None) -> bytes:
    """The whole DICOM JSON answer as bytes: a latency that ends when the
    server's answer has arrived, not after the client library decoded it
    (decoding 2 MB of JSON in Python costs more than most servers take)."""
    return bytes(get(target, path, DICOM_JSON, params).content)


def decode(body: bytes) -> Any:
    return json.loads(body) if body else []  # 204 / empty body: no matches


def get_streamed(target: Target, path: str, accept: str, timeout: float = 600) -> int:
    """GET and read the whole body in 1 MB chunks without keeping it; returns its size."""
    resp = target.session.get(f"{target.url}{path}", headers={"Accept": accept}, stream=True, timeout=timeout)
    check(resp)
    total = 0
    for chunk in resp.iter_content(CHUNK):
        total += len(chunk)
    return total


class LazyMultipart(io.RawIOBase):
    """A multipart/related STOW body rendered part by part while it is sent.

    Lengths are known in advance, so requests sends a Content-Length (no chunked
    encoding) and the client never holds more than one instance: that keeps a
    1 GB request from costing the *client* 1 GB.
    """

    def __init__(self, count: int, blob_size: int, render: Callable[[int], bytes]) -> None:
        super().__init__()
        self.count, self.render = count, render
        self.head = len(part(b""))
        self.total = count * (self.head + blob_size) + len(f"--{BOUNDARY}--\r\n")
        self._next, self._buf, self._pos, self._sent = 0, b"", 0, 0

    def __len__(self) -> int:
        return self.total

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        # requests subtracts tell() from len() for the Content-Length.
        return self._sent

    def read(self, size: int | None = -1) -> bytes:
        want = CHUNK if size is None or size < 0 else size
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._next_part(), 0
        out = self._buf[self._pos:self._pos + want]  # slices, never re-copies the rest
        self._pos += len(out)
        self._sent += len(out)
        return out

    def _next_part(self) -> bytes:
        n, self._next = self._next, self._next + 1
        if n < self.count:
            return part(self.render(n))
        return f"--{BOUNDARY}--\r\n".encode() if n == self.count else b""
