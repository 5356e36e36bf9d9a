"""Responses made of byte strings and slices of stored files, sent zero-copy.

A retrieve answer is mostly stored Part 10 files with a few bytes of
multipart framing between them. Read through Python, every byte is copied
twice in user space (page cache -> ``bytes`` -> socket) and that copy was the
largest cost of a study retrieve (py-spy: 44% of the server's CPU on page
cache copies, 21% on socket sends). ``os.sendfile`` moves file pages to the
socket inside the kernel, as nginx does.

Twisted's TCP transport has no sendfile, so on a plain TCP HTTP/1.x
connection the body is written to the transport's socket directly, with the
transport's own machinery for waiting: before each raw write its buffer must
be empty (the headers went through it), and when the socket is full we wait
for it to drain exactly as a paused streaming producer does — the transport
pauses the HTTP channel (which pauses our producer) and resumes it once it
has written everything and the socket is writable again. Chunked framing,
when HTTP/1.1 needs it, is written around each piece here.

Anything else — TLS, HTTP/2, a store without local files, a platform without
``os.sendfile`` — gets the same bytes through ``stream()``, read in chunks.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web import http
from twisted.web.server import Request

from .stream import ClientGone, StreamProducer, abort, close_iterator, stream, unregister

log = Logger()

#: Bytes sent to one connection before the reactor gets a turn (fairness
#: between clients: a fast local reader would otherwise never block).
STEP = 4 << 20

#: Switched off by ``--no-sendfile`` (and by tests of the fallback path).
enabled = True


@dataclass(frozen=True)
class FileSlice:
    """``length`` bytes of a stored object from ``offset``.

    ``path`` is its local file when the store has one (zero-copy possible);
    ``record`` is what the store needs to read the bytes otherwise.
    """

    path: str | None
    offset: int
    length: int
    record: Any = None


Piece = bytes | FileSlice


class StoredFileShort(Exception):
    """A stored file ended before the size its record gives (damaged storage)."""

    def __init__(self, missing: int) -> None:
        super().__init__(f"stored file ended {missing} bytes early")
        self.missing = missing


def body_length(pieces: Sequence[Piece]) -> int:
    return sum(len(p) if isinstance(p, bytes) else p.length for p in pieces)


async def send(request: Request, pieces: Sequence[Piece], read: Callable[[FileSlice], AsyncIterator[bytes]],
               *, announce_length: bool = False) -> None:
    """Send ``pieces`` as the whole response body.

    ``read`` yields a slice's bytes when it cannot be sent by the kernel.
    The caller has set the status and the other headers. A single object
    (``announce_length``) gets a Content-Length; a multipart answer goes out
    chunked on HTTP/1.1, one chunk per piece, as the streamed answers do:
    Python clients (urllib3 under requests and dicomweb_client) read a chunk
    in one call but a Content-Length body in 10 KB reads, which cost 16
    client threads fetching frames a third of their requests/s. Either way a
    cut answer is visible to the client (short body, or no last chunk).
    """
    if announce_length or request.clientproto != b"HTTP/1.1":
        request.setHeader(b"content-length", str(body_length(pieces)).encode())
    transport = raw_transport(request)
    if transport is None or any(isinstance(p, FileSlice) and p.path is None for p in pieces):
        await stream(request, _chunks(pieces, read))
        return
    producer = StreamProducer(request)
    request.registerProducer(producer, True)
    sender = _RawSender(request, transport, producer)
    corked = _cork(transport, True)
    try:
        request.write(b"")  # the status line and headers, through Twisted (which decides on chunking)
        chunked = bool(request.chunked)
        for piece in pieces:
            size = len(piece) if isinstance(piece, bytes) else piece.length
            if not size:
                continue  # an empty chunk would end a chunked body
            head, tail = (b"%x\r\n" % size, b"\r\n") if chunked else (b"", b"")
            if isinstance(piece, bytes):
                await sender.send_bytes(head + piece + tail)
            else:
                if head:
                    await sender.send_bytes(head)
                await sender.send_file(piece)
                if tail:
                    await sender.send_bytes(tail)
            request.sentLength += size
    except (ClientGone, CancelledError):
        producer.stopped = True
        log.info("response stopped after {sent} bytes: the client went away", sent=request.sentLength)
    except StoredFileShort as exc:
        producer.stopped = True
        log.warn("response aborted: a stored file ended {missing} bytes before its recorded size",
                 missing=exc.missing)
        abort(request)
    except Exception:
        producer.stopped = True
        log.failure("response aborted after {sent} bytes", sent=request.sentLength)
        abort(request)
    finally:
        if corked:
            _cork(transport, False)
        unregister(request)


def _cork(transport: tcp.Connection, on: bool) -> bool:
    """Hold partial TCP segments while the body goes out in several sends
    (headers, framing, files): without it every small send (the headers, a
    part header, chunk framing, the closing delimiter) leaves as its own
    small packet. nginx does the same (``tcp_nopush`` with ``sendfile``)."""
    cork = getattr(socket, "TCP_CORK", None)
    if cork is None:
        return False
    try:
        transport.socket.setsockopt(socket.IPPROTO_TCP, cork, 1 if on else 0)
    except OSError:
        return False
    return True


def raw_transport(request: Request) -> tcp.Connection | None:
    """The plain TCP transport under an HTTP/1.x request, if zero-copy can be used."""
    if not enabled or not hasattr(os, "sendfile"):
        return None
    channel = getattr(request, "channel", None)
    if not isinstance(channel, http.HTTPChannel):  # HTTP/2 streams, test doubles
        return None
    transport = getattr(channel, "transport", None)
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None  # TLS must encrypt in user space
    if transport.producer is not channel or not transport.connected:
        return None
    return transport


class _RawSender:
    """Writes to a transport's socket once the transport has nothing buffered."""

    def __init__(self, request: Request, transport: tcp.Connection, producer: StreamProducer) -> None:
        self._request = request
        self._transport = transport
        self._producer = producer
        self._fd: int = transport.socket.fileno()
        self._since_turn = 0
        self._flushed = False

    async def send_bytes(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            await self._ready()
            try:
                n = self._transport.socket.send(view)
            except BlockingIOError:
                await self._drained()
                continue
            except OSError as exc:
                raise _gone(exc) from None
            self._since_turn += n
            view = view[n:]

    async def send_file(self, piece: FileSlice) -> None:
        assert piece.path is not None
        fd = os.open(piece.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            offset, end = piece.offset, piece.offset + piece.length
            while offset < end:
                await self._ready()
                try:
                    n = os.sendfile(self._fd, fd, offset, min(end - offset, STEP))
                except BlockingIOError:
                    await self._drained()
                    continue
                except OSError as exc:
                    raise _gone(exc) from None
                if n == 0:
                    raise StoredFileShort(end - offset)
                self._since_turn += n
                offset += n
        finally:
            os.close(fd)

    async def _ready(self) -> None:
        if self._producer.stopped:
            raise ClientGone()
        # The headers (or anything else Twisted buffered) must leave first;
        # after STEP bytes the reactor gets a turn for other connections.
        if not self._flushed or self._since_turn >= STEP:
            self._flushed = True
            await self._drained()

    async def _drained(self) -> None:
        await self._transport_turn()
        if self._producer.stopped:
            raise ClientGone()

    def _transport_turn(self) -> Deferred[None]:
        """Fires when the transport has written its buffer and the socket can take more.

        This is the transport's own backpressure cycle: it pauses its
        producer (the HTTP channel, which pauses ours), and when a write
        turn finds nothing left to send it resumes them.
        """
        self._since_turn = 0
        transport, producer = self._transport, self._producer
        channel = transport.producer  # the HTTP channel (checked by raw_transport)
        if producer.paused is None and isinstance(channel, http.HTTPChannel):
            transport.producerPaused = True
            channel.pauseProducing()
        if producer.paused is None:  # the channel did not pass the pause on
            raise ClientGone()
        transport.startWriting()
        reset = getattr(self._request.channel, "resetTimeout", None)
        if reset is not None:
            reset()
        return producer.paused


def _gone(exc: OSError) -> Exception:
    if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
        return ClientGone()
    return exc


async def _chunks(pieces: Sequence[Piece], read: Callable[[FileSlice], AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
    for piece in pieces:
        if isinstance(piece, bytes):
            if piece:
                yield piece
            continue
        chunks = read(piece)
        try:
            async for data in chunks:
                yield data
        finally:
            await close_iterator(chunks)
