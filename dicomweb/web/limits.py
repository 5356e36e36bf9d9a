"""An answer to every over-long HTTP/1.x request head.

twisted.web's channel bounds the request line and each header line
(``MAX_LENGTH``, 16384 bytes), the head as a whole (``totalHeadersSize``,
16384 bytes) and the header count (``maxHeaders``, 500); past a bound it
closes the connection without an answer (a line too long) or answers a bare
400. A client then cannot tell a bug from a limit. This channel answers
with the status RFC 9110 15.5.15 and RFC 6585 5 define, a short reason,
and then closes:

- request line too long -> 414 URI Too Long;
- a header line, the whole head, or the header count too large -> 431
  Request Header Fields Too Large.

HTTP/2 (negotiated by ALPN) gets the same answers for the same bounds
(:func:`http2_refusal`, asked by the request class before the resource is
looked up): an over-long ``:path`` gets 414, a head larger than 16384 bytes
(path and fields, each counted as an HTTP/1.1 line would be) or with more than
500 fields gets 431, on that stream only. A field block over 65536 bytes, the
SETTINGS_MAX_HEADER_LIST_SIZE the HTTP/2 layer announces (RFC 9113 6.5.2),
ends the whole connection there, before any request exists. The channel is
wrapped like twisted.web's own, so the site still offers h2.
"""

from __future__ import annotations

from typing import Any

from twisted.web.http import HTTPChannel, Request

from .http2 import GenericHTTPChannel


def _answer(status: bytes, reason: str) -> bytes:
    body = (reason + "\n").encode("ascii")
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


URI_TOO_LONG = b"414 URI Too Long"
HEADERS_TOO_LARGE = b"431 Request Header Fields Too Large"


class LimitedHTTPChannel(HTTPChannel):
    """HTTPChannel that answers 414/431 at its limits instead of closing."""

    _in_head = False  # the request line of the current request is read

    def lineReceived(self, line: bytes) -> None:
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            if self._in_head:
                self._refuse(HEADERS_TOO_LARGE, f"request headers larger than {self.totalHeadersSize} bytes")
            else:
                self._refuse(URI_TOO_LONG, f"request line longer than {self.totalHeadersSize} bytes")
            return
        if not self._in_head and line:
            self._in_head = True
        elif self._in_head and not line:
            self._in_head = False  # end of the head; the next line starts a request
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse(HEADERS_TOO_LARGE, f"more than {self.maxHeaders} request headers")
            return False
        return bool(super().headerReceived(line))

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._in_head:
            self._refuse(HEADERS_TOO_LARGE, f"a request header line longer than {self.MAX_LENGTH} bytes")
        else:
            self._refuse(URI_TOO_LONG, f"request line longer than {self.MAX_LENGTH} bytes")

    def _refuse(self, status: bytes, reason: str) -> None:
        transport: Any = self.transport
        transport.write(_answer(status, reason))
        self.loseConnection()


def http2_refusal(request: Request) -> tuple[int, str] | None:
    """The (status, reason) an HTTP/2 request gets for an over-long head,
    with the bounds of the HTTP/1.x channel; None when within them (and for
    every HTTP/1.x request, which the channel has checked already)."""
    if request.clientproto != b"HTTP/2":
        return None
    path = request.uri or b""
    if len(path) > HTTPChannel.totalHeadersSize:
        return 414, f"request path longer than {HTTPChannel.totalHeadersSize} bytes"
    fields = [(name, value) for name, values in request.requestHeaders.getAllRawHeaders() for value in values]
    if len(fields) > HTTPChannel.maxHeaders:
        return 431, f"more than {HTTPChannel.maxHeaders} request headers"
    # as HTTP/1.1 lines: "name: value" and the request line "GET path HTTP/1.1"
    size = len(path) + 14 + sum(len(name) + 2 + len(value) for name, value in fields)
    if size > HTTPChannel.totalHeadersSize:
        return 431, f"request headers larger than {HTTPChannel.totalHeadersSize} bytes"
    return None


def limited_channel(*_site: Any) -> GenericHTTPChannel:
    """A ``Site.protocol`` (set on the class or the instance): the protocol
    switch (HTTP/2 by ALPN, :mod:`dicomweb.web.http2`) around a
    :class:`LimitedHTTPChannel`."""
    return GenericHTTPChannel(LimitedHTTPChannel())


__all__ = ["LimitedHTTPChannel", "http2_refusal", "limited_channel"]
