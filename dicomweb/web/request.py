"""The request class: caps the body size and spools it next to the store.

twisted.web buffers a request body before the resource sees it: small bodies
in memory, large ones in a temporary file. This subclass (1) puts that file
in the store's spool directory, so STOW copies parts into place within one
file system, and (2) stops keeping bytes once the body passes the configured
cap, so a client can never make the server hold more than that; the route
then answers 413.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import IO, Any

from twisted.web.server import Request

SMALL_BODY = 100_000


class _Discard(io.BytesIO):
    """A body sink that keeps nothing (the body is over the cap)."""

    def write(self, data: Any) -> int:
        return len(data)


class DICOMwebRequest(Request):
    max_body: int = 1 << 30
    spool: Callable[[], IO[bytes]] | None = None

    too_large = False
    _received = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received_at = time.monotonic()  # for the latency metric

    @property
    def body_bytes(self) -> int:
        return self._received

    def gotLength(self, length: int | None) -> None:
        self._received = 0
        if length is not None and length > self.max_body:
            self.too_large = True
            self.content = _Discard()  # type: ignore[assignment]
        elif self._refused_whatever_the_body():
            self.content = _Discard()  # type: ignore[assignment]
        elif (length is not None and length < SMALL_BODY) or self.spool is None:
            super().gotLength(length)
        else:
            self.content = self.spool()  # type: ignore[assignment]

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
        if not self.too_large and self._received > self.max_body:
            self.too_large = True
            self.content.close()  # type: ignore[union-attr]
            self.content = _Discard()  # type: ignore[assignment]
        self.content.write(data)  # type: ignore[union-attr]


def request_factory(max_body: int, spool: Callable[[], IO[bytes]] | None) -> type[DICOMwebRequest]:
    """A request class bound to this service's limits."""
    return type("BoundDICOMwebRequest", (DICOMwebRequest,), {"max_body": max_body, "spool": staticmethod(spool) if spool else None})


__all__ = ["DICOMwebRequest", "request_factory"]
