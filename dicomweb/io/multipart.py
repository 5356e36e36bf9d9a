"""multipart/related: an incremental reader over a file, a splitter that
writes each part to a file of its own as the body arrives, and a part writer.

The reader never holds a whole part in memory: it scans the body file in
chunks and reports each part as ``(headers, offset, length)`` inside that file,
so the store can copy the bytes once, straight from where twisted.web spooled
them.

The splitter (:class:`PartSplitter`) is fed the body chunk by chunk while it
is received and writes each part's bytes into its own file, which the store
can then move into place (a rename, no copy). It only handles well-formed
bodies; at the first thing it does not expect it stops splitting, keeps the
raw bytes, and can rebuild the exact body as one file for the reader above,
so malformed bodies get the reader's errors, unchanged.
"""

from __future__ import annotations

import io
import mmap
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from .files import copy_range, start_writeback

CHUNK = 1 << 20
MAX_HEADER_BYTES = 16 * 1024
MAX_PARTS = 100_000
#: RFC 2046 5.1.1 allows 70 characters; real clients send longer ones (73
#: seen), so up to this many are read when the body is unambiguous.
MAX_BOUNDARY = 256
RELEASE_STEP = 8 << 20  # unmap scanned body pages in steps of this size


class MultipartError(ValueError):
    """The body is not well-formed multipart (the message says why)."""


@dataclass(frozen=True)
class _Headed:
    headers: dict[str, str]  # lower-cased names

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


@dataclass(frozen=True)
class Part(_Headed):
    """One part of a body read in place: where its bytes are in the body."""

    offset: int
    length: int


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


def part_length(headers: dict[str, str]) -> int | None:
    """A part's own ``Content-Length`` (RFC 2046 allows any header in a part;
    some clients send it). When given, the part is exactly that many bytes and
    a delimiter must follow them: a delimiter look-alike inside the part then
    does not cut it short. Raises ``MultipartError`` for a value that is not a
    number."""
    value = headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit() or len(value) > 15:
        raise MultipartError("a part's Content-Length is not a number")
    return int(value)


class _Scanner:
    """Finds byte patterns in a file without reading it whole."""

    def __init__(self, fp: IO[bytes], start: int, end: int) -> None:
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


def iter_parts(fp: IO[bytes], boundary: str, size: int | None = None) -> Iterator[Part]:
    """Yield the parts of the multipart body in ``fp`` (from its start).

    Raises ``MultipartError`` for a missing first delimiter, unterminated
    headers, a missing close delimiter (a truncated body), or too many parts.
    """
    if not boundary or len(boundary) > MAX_BOUNDARY:
        raise MultipartError(f"boundary missing or longer than {MAX_BOUNDARY} characters")
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
        length = part_length(headers)
        if length is not None:
            next_delim = body_start + length
            if scanner.read(next_delim, len(delimiter)) != delimiter:
                raise MultipartError("a part's Content-Length does not end at a boundary delimiter")
        else:
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


# -- splitting a body into part files while it is received --------------------

#: Bytes before the first delimiter the splitter waits through (a preamble
#: longer than this is legal but unusual: the reader handles it).
MAX_PREAMBLE = 64 * 1024
#: Delimiter lines, padding and part headers the splitter keeps in memory to
#: rebuild the body if it has to hand it to the reader after all.
MAX_FRAMING_BYTES = 1 << 20

_PREAMBLE, _DELIMITER, _HEADERS, _BODY, _EPILOGUE, _RAW, _COUNTED_END = range(7)


@dataclass(frozen=True)
class PartFile(_Headed):
    """One received part: its headers and the file holding exactly its bytes."""

    path: str
    length: int


@dataclass(frozen=True)
class _Span:
    """Raw body bytes kept in a file of the splitter's (a part, or the rest)."""

    path: str
    length: int


class PartSplitter:
    """Writes each part of a multipart body into its own file in ``directory``
    as the body is fed to it (``write``), chunk by chunk.

    Used as the request's body sink. After ``finish``, either ``parts`` lists
    every part of a well-formed body (``complete``), or splitting stopped at
    something unexpected (malformed framing, an early end, too many parts)
    and ``materialize`` rebuilds the exact body as one file for
    :func:`iter_parts`, which then reports the error it always did.

    Memory stays bounded: at most one received chunk, a delimiter's length of
    body bytes, and the framing (``MAX_FRAMING_BYTES``). ``close`` removes
    every file still in the directory (parts the store did not move into
    place); while a user holds the splitter (``hold``), closing waits for it.

    ``on_part`` is called with each part as soon as its file is complete
    (closed, writeback started), while later parts may still be arriving: the
    receiver can start work on it early. It must not raise.
    """

    def __init__(self, boundary: str, directory: str, max_parts: int = MAX_PARTS,
                 on_part: Callable[[PartFile], None] | None = None) -> None:
        self.directory = directory
        self.parts: list[PartFile] = []
        self._on_part = on_part
        self._dash = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._dash
        self._max_parts = max_parts
        self._state = _PREAMBLE
        self._buf = bytearray()  # framing bytes not yet understood
        self._scanned = 0  # how far into _buf a search already looked
        self._tail = b""  # body bytes that may start a delimiter
        self._fd = -1  # the current part's (or the raw rest's) file
        self._path = ""
        self._written = 0
        self._headers: dict[str, str] = {}
        self._remaining: int | None = None  # bytes left of a part with a Content-Length
        self._segments: list[bytes | _Span] = []  # the body so far, for materialize
        self._framing_kept = 0
        self._received = 0
        self._holders = 0
        self._close_pending = False
        self.closed = False

    # -- the file-like side twisted.web sees ------------------------------

    def tell(self) -> int:
        return self._received

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """twisted.web rewinds the body before the resource reads it; the
        splitter is not read as a stream, so there is nothing to move."""
        return 0

    def write(self, data: bytes) -> int:
        if self.closed:
            return len(data)
        self._received += len(data)
        if self._state == _RAW:
            self._write_file(data)
        else:
            self._feed(data)
        return len(data)

    # -- state machine ----------------------------------------------------

    def _feed(self, data: bytes) -> None:
        pos = 0
        if self._buf:
            # A framing piece began in an earlier chunk: it continues in the
            # buffer (bounded by the framing limits), then the rest of this
            # chunk is taken from where the framing ended.
            self._buf += data
            end, more = self._framing(self._buf, 0)
            if more:
                del self._buf[:end]  # small: what the framing limits allow
                return
            data, pos = bytes(self._buf[end:]), 0
            self._buf = bytearray()
        while pos < len(data):
            if self._state == _BODY:
                pos = self._feed_body(data, pos)
            elif self._state == _EPILOGUE:
                return  # ignored, as the reader ignores it
            elif self._state == _RAW:
                self._write_file(memoryview(data)[pos:])
                return
            else:
                pos, more = self._framing(data, pos)
                if more:
                    # Incomplete: short, else the framing limits gave up.
                    self._buf = bytearray(data[pos:])
                    return

    def _framing(self, buf: bytes | bytearray, pos: int) -> tuple[int, bool]:
        """Advance through preamble, delimiter line and part headers from
        ``pos`` as far as ``buf`` allows. Returns ``(position, more)``: with
        ``more``, the framing is incomplete from ``position`` on and needs
        more bytes (the caller keeps ``buf[position:]``); else ``position`` is
        where a part body (or the epilogue, or raw bytes) starts. Searches
        resume where they stopped (``_scanned``), so bytes trickling in one
        at a time cost no more."""
        while True:
            avail = len(buf) - pos
            if self._state == _PREAMBLE:
                dash = self._dash
                found = buf.find(dash, pos + max(0, self._scanned - len(dash)))
                if found < 0:
                    self._scanned = avail
                    if avail > MAX_PREAMBLE:
                        return self._give_up(buf, pos), False
                    return pos, True
                # The reader takes the first occurrence only, and needs it
                # at the start or after a CRLF.
                if found != pos and (found - pos < 2 or buf[found - 2:found] != b"\r\n"):
                    return self._give_up(buf, pos), False
                pos = self._consume(buf, pos, found + len(dash) - pos, _DELIMITER)
            elif self._state == _DELIMITER:
                if avail < 2:
                    return pos, True
                if buf[pos:pos + 2] == b"--":
                    self._consume(buf, pos, 2, _EPILOGUE)
                    return len(buf), False  # the reader ignores the epilogue too
                # Transport padding (spaces, tabs) may precede the CRLF, up to
                # the reader's limit of 1024 bytes.
                eol = buf.find(b"\r\n", pos + max(0, self._scanned - 1), pos + 1026)
                if eol < 0:
                    self._scanned = avail
                    if avail >= 1026:
                        return self._give_up(buf, pos), False
                    return pos, True
                if buf[pos:eol].strip(b" \t"):
                    return self._give_up(buf, pos), False
                pos = self._consume(buf, pos, eol + 2 - pos, _HEADERS)
            elif self._state == _HEADERS:
                if avail < 2:
                    return pos, True
                if buf[pos:pos + 2] == b"\r\n":
                    end, start = pos, pos + 2
                else:
                    found = buf.find(b"\r\n\r\n", pos + max(0, self._scanned - 3), pos + MAX_HEADER_BYTES + 4)
                    if found < 0:
                        self._scanned = avail
                        if avail >= MAX_HEADER_BYTES + 4:
                            return self._give_up(buf, pos), False
                        return pos, True
                    end, start = found, found + 4
                try:
                    headers = _parse_headers(bytes(buf[pos:end]))
                    self._remaining = part_length(headers)
                except MultipartError:
                    return self._give_up(buf, pos), False
                if len(self.parts) >= self._max_parts or self._framing_kept + start - pos > MAX_FRAMING_BYTES:
                    return self._give_up(buf, pos), False
                pos = self._consume(buf, pos, start - pos, _COUNTED_END if self._remaining == 0 else _BODY)
                self._headers = headers
                self._open_file("part-")
                if self._state == _COUNTED_END:
                    continue  # an empty counted part: its delimiter follows at once
                return pos, False
            elif self._state == _COUNTED_END:
                # A counted part ends here: the delimiter must follow exactly.
                size = len(self._delimiter)
                got = bytes(buf[pos:pos + size])
                if not self._delimiter.startswith(got):
                    return self._give_up(buf, pos), False
                if len(got) < size:
                    return pos, True
                self._end_part()
                pos += size
            else:
                return pos, False

    def _consume(self, buf: bytes | bytearray, pos: int, count: int, state: int) -> int:
        """``buf[pos:pos + count]`` is framing: keep it (for ``materialize``)
        and move to ``state``; returns the position after it."""
        self._segments.append(bytes(buf[pos:pos + count]))
        self._framing_kept += count
        self._scanned = 0
        self._state = state
        return pos + count

    def _open_file(self, prefix: str) -> None:
        self._path = os.path.join(self.directory, prefix + uuid.uuid4().hex)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        self._written = 0

    def _write_file(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            self._written += n
            view = view[n:]

    def _feed_body(self, data: bytes, pos: int) -> int:
        """Write part bytes from ``pos`` up to the next delimiter. Returns
        where the bytes after that delimiter start (the part is complete),
        or ``len(data)`` (all consumed, the part goes on).

        The search runs over each chunk in place; only the last
        ``len(delimiter) - 1`` bytes are held back, as they may be the start
        of a delimiter split across chunks."""
        if self._remaining is not None:
            take = min(self._remaining, len(data) - pos)
            self._write_file(memoryview(data)[pos:pos + take])
            self._remaining -= take
            if not self._remaining:
                self._state = _COUNTED_END
            return pos + take
        delim = self._delimiter
        size = len(delim)
        keep = size - 1
        tail = self._tail
        if tail:
            if len(data) - pos < 4 * size:
                # A tiny chunk: a delimiter may span the tail, all of it, and
                # more to come, so search them joined (a few bytes).
                joined = tail + data[pos:]
                found = joined.find(delim)
                if found >= 0:
                    self._tail = b""
                    self._write_file(joined[:found])
                    self._end_part()
                    return pos + found + size - len(tail)
                cut = max(0, len(joined) - keep)
                self._write_file(joined[:cut])
                self._tail = joined[cut:]
                return len(data)
            # A delimiter starting in the tail ends within ``keep`` bytes.
            found = (tail + data[pos:pos + keep]).find(delim)
            self._tail = b""
            if found >= 0:
                self._write_file(tail[:found])
                self._end_part()
                return pos + found + size - len(tail)
            self._write_file(tail)
        found = data.find(delim, pos)
        if found >= 0:
            self._write_file(memoryview(data)[pos:found])
            self._end_part()
            return found + size
        cut = max(pos, len(data) - keep)
        self._write_file(memoryview(data)[pos:cut])
        self._tail = data[cut:]
        return len(data)

    def _end_part(self) -> None:
        # Writeback starts now, while later parts are still arriving: the
        # store's fsync then finds the data (mostly) on disk already.
        start_writeback(self._fd)
        os.close(self._fd)
        self._fd = -1
        part = PartFile(self._headers, self._path, self._written)
        self.parts.append(part)
        self._segments.append(_Span(part.path, part.length))
        self._segments.append(self._delimiter)
        self._framing_kept += len(self._delimiter)
        self._state = _DELIMITER
        if self._on_part is not None:
            self._on_part(part)

    def _give_up(self, buf: bytes | bytearray, pos: int) -> int:
        """Stop splitting: ``buf[pos:]`` and everything after it is kept raw,
        in order, so ``materialize`` can rebuild the body byte for byte.
        Returns ``len(buf)`` (all consumed)."""
        if self._fd >= 0:  # a part cut short: its bytes so far
            os.close(self._fd)
            self._fd = -1
            self._segments.append(_Span(self._path, self._written))
        self._state = _RAW
        self._open_file("raw-")
        self._write_file(bytes(buf[pos:]) + self._tail)
        self._buf = bytearray()
        self._tail = b""
        return len(buf)

    # -- the result -------------------------------------------------------

    def finish(self) -> None:
        """The whole body has arrived."""
        if self.closed:
            return
        if self._state != _EPILOGUE and self._state != _RAW:
            self._give_up(self._buf, 0)  # ended early: the reader says how
        if self._state == _RAW and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._segments.append(_Span(self._path, self._written))

    @property
    def complete(self) -> bool:
        """Whether the body was well-formed and ``parts`` lists all of it."""
        return self._state == _EPILOGUE and not self.closed

    def materialize(self, spool: Callable[[], IO[bytes]]) -> IO[bytes]:
        """The exact body received, as one file from ``spool`` (rewound), for
        when splitting gave up. Blocking: run it in a thread."""
        out = spool()
        try:
            for segment in self._segments:
                if isinstance(segment, bytes):
                    out.write(segment)
                else:
                    with open(segment.path, "rb") as src:
                        copy_range(src, 0, segment.length, out)
            out.flush()
            out.seek(0)
        except BaseException:
            out.close()
            raise
        return out

    # -- lifetime ---------------------------------------------------------

    def hold(self) -> None:
        """A user reads or moves the part files: ``close`` waits for ``release``."""
        self._holders += 1

    def release(self) -> None:
        self._holders -= 1
        if self._holders == 0 and self._close_pending:
            self.close()

    def close(self) -> None:
        """Remove every file the splitter made that is still there (a part the
        store moved into place is not). Idempotent; deferred while held."""
        if self._holders > 0:
            self._close_pending = True
            return
        if self.closed:
            return
        self.closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._segments.append(_Span(self._path, self._written))
        for segment in self._segments:
            if isinstance(segment, _Span):
                try:
                    os.unlink(segment.path)
                except FileNotFoundError:
                    pass
        self._segments.clear()
        self.parts.clear()
