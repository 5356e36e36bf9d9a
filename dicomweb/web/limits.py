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

HTTP/2 (negotiated by ALPN) keeps its own limits: the channel is wrapped
like twisted.web's own, so the site still offers h2.
"""

from __future__ import annotations

from typing import Any

from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol


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


def limited_channel(*_site: Any) -> _GenericHTTPChannelProtocol:
    """A ``Site.protocol`` (set on the class or the instance): twisted.web's
    protocol (h2 by ALPN) around a :class:`LimitedHTTPChannel`."""
    return _GenericHTTPChannelProtocol(LimitedHTTPChannel())


__all__ = ["LimitedHTTPChannel", "limited_channel"]
