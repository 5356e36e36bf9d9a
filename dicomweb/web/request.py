"""The request class: caps the body size and spools it next to the store.

twisted.web buffers a request body before the resource sees it: small bodies
in memory, large ones in a temporary file. This subclass (1) puts that file
in the store's spool directory, so STOW copies parts into place within one
file system, (2) when the store offers a directory for part files
(``Spool.parts_dir``) and the body is multipart/related, splits it into
one file per part as it arrives (:class:`~dicomweb.io.multipart.PartSplitter`),
so the store renames each part into place instead of copying it, and (3)
stops keeping bytes once the body passes the configured cap, so a client can
never make the server hold more than that; the route then answers 413, and
(4) when the disk refuses the body (full), discards the rest of it and tells
the route, which answers 507 (nothing of such a body was acknowledged).

Where the body goes is decided once every header is in: at the first body
chunk, or at the end of a request without one. HTTP/1.x announces the length
after the whole head, but an HTTP/2 stream announces it as soon as its
``content-length`` field is decoded, possibly before ``content-type`` or
``authorization`` (RFC 9113 8.2 leaves field order free).

HTTP/2 requests also get the request-head limits here
(:func:`~dicomweb.web.limits.http2_refusal`): the HTTP/1.x channel checks
them while reading lines, which an HTTP/2 stream never does.
"""

from __future__ import annotations

import errno
import io
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.web.server import Request

from ..ingest import PartPreparer
from ..io.multipart import MAX_BOUNDARY, PartSplitter
from ..mediatype import parse_media_type
from ..store.base import Spool
from .limits import http2_refusal
from .stow import DICOM

SMALL_BODY = 100_000

log = Logger()


class _Discard(io.BytesIO):
    """A body sink that keeps nothing (the body is over the cap)."""

    def write(self, data: Any) -> int:
        return len(data)


class DICOMwebRequest(Request):
    max_body: int = 1 << 30
    spool: Spool | None = None
    #: Makes the :class:`~dicomweb.ingest.PartPreparer` of a split body (None: no work ahead).
    preparer_factory: Callable[[], PartPreparer] | None = None
    #: The preparer working on this request's part files, if any.
    preparer: PartPreparer | None = None

    too_large = False
    #: Why the body could not be written to disk (None: it could), e.g. a
    #: full disk: the rest of the body is then discarded and the route answers
    #: 507 without storing anything of it.
    receive_error: str | None = None
    _received = 0
    _length: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received_at = time.monotonic()  # for the latency metric

    @property
    def body_bytes(self) -> int:
        return self._received

    def gotLength(self, length: int | None) -> None:
        self._received = 0
        self._length = length
        self.content = None  # chosen by _open_body once every header is in

    def _open_body(self) -> None:
        length = self._length
        if length is not None and length > self.max_body:
            self.too_large = True
            self.content = _Discard()
        elif self._refused_whatever_the_body():
            self.content = _Discard()
        elif (splitter := self._part_splitter()) is not None:
            self.content = splitter
        elif (length is not None and length < SMALL_BODY) or self.spool is None:
            super().gotLength(length)
        else:
            self.content = self.spool.temporary_file()

    def _part_splitter(self) -> PartSplitter | None:
        """A splitter for a multipart/related body with a usable boundary,
        when the store has a part directory; else None (the body is spooled
        whole, and the multipart reader sees it as before).

        The method is not known yet (twisted.web sets it after the body), so
        any such body is split; routes other than STOW never read it, and the
        part files go when the request is done (``close``)."""
        directory = self.spool.parts_dir if self.spool is not None else None
        content_type = self.getHeader(b"content-type")
        if directory is None or not content_type:
            return None
        try:
            media = parse_media_type(content_type.decode("latin-1"))
        except (ValueError, UnicodeDecodeError):
            return None
        boundary = media.param("boundary")
        if media.type != "multipart/related" or not boundary or len(boundary) > MAX_BOUNDARY:
            return None
        if self.preparer_factory is not None and (media.param("type") or DICOM).lower() == DICOM:
            # Whole Part 10 parts: analysed and synced while the rest arrives.
            self.preparer = self.preparer_factory()
            return PartSplitter(boundary, directory, on_part=self.preparer.part_done)
        return PartSplitter(boundary, directory)

    def _refused_whatever_the_body(self) -> bool:
        """True when the site's root will refuse this request before any
        route reads the body (no credentials on an authenticating server):
        then nothing is spooled, so anonymous clients cannot fill the disk.
        Asked of the root resource, which alone knows the auth policy."""
        root = getattr(getattr(self.channel, "site", None), "resource", None)
        check = getattr(root, "refuses_before_body", None)
        return bool(check is not None and check(self))

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self.content is None:
            self._open_body()
        content = self.content
        assert content is not None
        if not self.too_large and self._received > self.max_body:
            self.too_large = True
            content.close()
            content = self.content = _Discard()
        try:
            content.write(data)
        except OSError as exc:
            self._failed_to_receive(exc)

    def _failed_to_receive(self, exc: OSError) -> None:
        self.receive_error = ("out of storage space" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                              else "the body could not be written to disk")
        log.error("receiving a request body failed: {error}", error=exc.strerror or str(exc))
        content = self.content
        self.content = _Discard()
        if content is not None:
            content.close()  # a splitter removes its part files

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.content is None:
            self._open_body()  # a request without a body
        if isinstance(self.content, PartSplitter):
            try:
                self.content.finish()  # before the resource sees the body
            except OSError as exc:
                self._failed_to_receive(exc)
        super().requestReceived(command, path, version)

    def process(self) -> None:
        refusal = http2_refusal(self)
        if refusal is None:
            super().process()
            return
        self.site = getattr(self.channel, "site", None)  # the access log and metrics see it like any other
        status, reason = refusal
        body = (reason + "\n").encode("ascii")
        self.setResponseCode(status)
        self.setHeader(b"content-type", b"text/plain; charset=utf-8")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()


def request_factory(max_body: int, spool: Spool | None,
                    preparer_factory: Callable[[], PartPreparer] | None = None) -> type[DICOMwebRequest]:
    """A request class bound to this service's limits, its store's spool and
    the work started on part files as they arrive."""
    return type("BoundDICOMwebRequest", (DICOMwebRequest,),
                {"max_body": max_body, "spool": spool, "preparer_factory": preparer_factory})


__all__ = ["DICOMwebRequest", "request_factory"]
