"""Single byte ranges of an answer (RFC 9110 14): ``Range: bytes=a-b`` -> 206.

A range is taken of the representation as a whole: the frame's bytes for a
single-part answer, the whole multipart body (boundaries included) for a
multipart one. Successive ranges of one answer fit together because the
body is the same bytes on every request (validators.boundary_of). Several
ranges, or a malformed header, get the whole answer (200), which RFC 9110
14.2 allows; an unsatisfiable range gets 416 with ``Content-Range: bytes */size``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from twisted.web.server import Request

from .errors import HTTPError
from .sendfile import FileSlice, Piece
from .validators import if_range_allows

_SINGLE = re.compile(rb"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*")


def parse_range(header: bytes | None, size: int) -> tuple[int, int] | None:
    """(start, length) of a single byte range, or None to send everything.

    Multiple ranges and malformed headers are ignored (RFC 9110 14.2 lets a
    server do that); an unsatisfiable single range is 416.
    """
    if not header:
        return None
    match = _SINGLE.fullmatch(header)
    if not match or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # suffix: the last N bytes
        count = min(int(last), size)
        start, end = size - count, size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start or (not first and count == 0):
        raise HTTPError(416, "the requested range is outside the answer", {"Content-Range": f"bytes */{size}"})
    return start, end - start + 1


def requested(request: Request, size: int, tag: bytes | None = None) -> tuple[int, int] | None:
    """The range to send of a ``size``-byte answer named by ``tag``, with the
    206 status and Content-Range set; None: send it whole."""
    if tag is not None and not if_range_allows(request, tag):
        return None
    wanted = parse_range(request.getHeader(b"range"), size)
    if wanted is not None:
        start, length = wanted
        request.setResponseCode(206)
        request.setHeader(b"content-range", f"bytes {start}-{start + length - 1}/{size}".encode())
    return wanted


def slice_pieces(pieces: Sequence[Piece], start: int, length: int) -> list[Piece]:
    """The pieces that hold bytes ``start`` to ``start + length`` of the body they make."""
    out: list[Piece] = []
    position, end = 0, start + length
    for piece in pieces:
        size = len(piece) if isinstance(piece, bytes) else piece.length
        low, high = max(start, position), min(end, position + size)
        if low < high:
            if isinstance(piece, bytes):
                out.append(piece[low - position:high - position])
            else:
                out.append(FileSlice(piece.path, piece.offset + low - position, high - low, piece.record))
        position += size
        if position >= end:
            break
    return out


__all__ = ["parse_range", "requested", "slice_pieces"]
