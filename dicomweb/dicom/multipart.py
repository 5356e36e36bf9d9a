"""multipart/related: an incremental reader over a file, and a part writer.

The reader never holds a whole part in memory: it scans the body file in
chunks and reports each part as ``(headers, offset, length)`` inside that file,
so the store can copy the bytes once, straight from where twisted.web spooled
them.
"""

from __future__ import annotations

import io
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

CHUNK = 1 << 20
MAX_HEADER_BYTES = 16 * 1024
MAX_PARTS = 100_000
RELEASE_STEP = 8 << 20  # unmap scanned body pages in steps of this size


class MultipartError(ValueError):
    """The body is not well-formed multipart (the message says why)."""


@dataclass(frozen=True)
class Part:
    headers: dict[str, str]  # lower-cased names
    offset: int
    length: int

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not block:
        return headers
    for line in block.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and headers:  # obsolete folding
            last = next(reversed(headers))
            headers[last] += " " + line.strip().decode("latin-1")
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            raise MultipartError("malformed part header")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return headers


class _Scanner:
    """Finds byte patterns in a file without reading it whole."""

    def __init__(self, fp: BinaryIO, start: int, end: int) -> None:
        self.fp = fp
        self.pos = start
        self.end = end
        # A memory map searches the file in place (no copy into Python
        # bytes); in-memory bodies are searched in their own buffer.
        self._view: Any = None
        self._released = 0
        if isinstance(fp, io.BytesIO):
            self._view = fp.getvalue()  # small bodies only (twisted.web keeps < 100 KB in memory)
        elif end > 0:
            try:
                self._view = mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
                self._view = None

    def _release(self, upto: int) -> None:
        """Unmap the pages already scanned: the scan only moves forward, and
        mapped pages count in the process's RSS (a 1 GB body would add 1 GB)."""
        if not isinstance(self._view, mmap.mmap):
            return
        stop = upto // mmap.PAGESIZE * mmap.PAGESIZE
        if stop - self._released >= RELEASE_STEP:
            self._view.madvise(mmap.MADV_DONTNEED, self._released, stop - self._released)
            self._released = stop

    def close(self) -> None:
        if isinstance(self._view, mmap.mmap):
            self._view.close()
        self._view = None

    def find(self, pattern: bytes, limit: int | None = None) -> int:
        """Absolute offset of the next ``pattern`` at or after ``pos``, or -1.

        With ``limit``, give up (-1) after scanning that many bytes.
        """
        if self._view is not None:
            end = self.end if limit is None else min(self.end, self.pos + limit + len(pattern))
            found: int = self._view.find(pattern, self.pos, end)
            self._release(found if found >= 0 else end)
            return found
        overlap = len(pattern) - 1
        start = self.pos
        scanned = 0
        while start < self.end:
            self.fp.seek(start)
            size = min(max(CHUNK, 2 * len(pattern)), self.end - start)
            chunk = self.fp.read(size)
            if not chunk:
                return -1
            index = chunk.find(pattern)
            if index >= 0:
                return start + index
            if start + len(chunk) >= self.end:
                return -1
            scanned += len(chunk) - overlap
            if limit is not None and scanned > limit:
                return -1
            start += max(1, len(chunk) - overlap)
        return -1

    def read(self, offset: int, length: int) -> bytes:
        if self._view is not None:
            return bytes(self._view[offset:offset + length])
        self.fp.seek(offset)
        return self.fp.read(length)


def iter_parts(fp: BinaryIO, boundary: str, size: int | None = None) -> Iterator[Part]:
    """Yield the parts of the multipart body in ``fp`` (from its start).

    Raises ``MultipartError`` for a missing first delimiter, unterminated
    headers, a missing close delimiter (a truncated body), or too many parts.
    """
    if not boundary or len(boundary) > 70:
        raise MultipartError("boundary missing or longer than 70 characters")
    if size is None:
        fp.seek(0, os.SEEK_END)
        size = fp.tell()
    scanner = _Scanner(fp, 0, size)
    try:
        yield from _parts(scanner, boundary)
    finally:
        scanner.close()


def _parts(scanner: _Scanner, boundary: str) -> Iterator[Part]:
    dash = b"--" + boundary.encode("latin-1")
    first = scanner.find(dash)
    if first < 0 or (first > 0 and scanner.read(first - 2, 2) != b"\r\n"):
        raise MultipartError("body does not start with the boundary delimiter")
    delimiter = b"\r\n" + dash
    pos = first + len(dash)
    count = 0
    while True:
        tail = scanner.read(pos, 2)
        if tail == b"--":
            return  # close delimiter; the epilogue is ignored
        # Transport padding (spaces/tabs) may follow a delimiter before CRLF.
        scanner.pos = pos
        eol = scanner.find(b"\r\n", limit=1024)
        if eol < 0 or scanner.read(pos, eol - pos).strip(b" \t"):
            raise MultipartError("truncated body or malformed delimiter line")
        header_start = eol + 2
        if scanner.read(header_start, 2) == b"\r\n":
            header_end, body_start = header_start, header_start + 2
        else:
            scanner.pos = header_start
            found = scanner.find(b"\r\n\r\n", limit=MAX_HEADER_BYTES)
            if found < 0:
                raise MultipartError("part headers are unterminated or too long")
            header_end, body_start = found, found + 4
        headers = _parse_headers(scanner.read(header_start, header_end - header_start))
        scanner.pos = body_start
        next_delim = scanner.find(delimiter)
        if next_delim < 0:
            raise MultipartError("truncated body: no closing boundary delimiter")
        count += 1
        if count > MAX_PARTS:
            raise MultipartError(f"more than {MAX_PARTS} parts")
        yield Part(headers, body_start, next_delim - body_start)
        pos = next_delim + len(delimiter)


def part_header(content_type: str, extra: dict[str, str] | None = None) -> bytes:
    """The header block of one part (without the delimiter line)."""
    lines = [f"Content-Type: {content_type}"]
    for name, value in (extra or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def delimiter(boundary: str, first: bool = False) -> bytes:
    return (b"" if first else b"\r\n") + b"--" + boundary.encode("latin-1") + b"\r\n"


def close_delimiter(boundary: str) -> bytes:
    return b"\r\n--" + boundary.encode("latin-1") + b"--\r\n"
