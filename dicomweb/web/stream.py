"""Streaming responses: a push producer fed by an async iterator of chunks.

The producer is registered on the request, so Twisted pauses it when the
client reads slower than we produce (backpressure) and stops it when the
client goes away; memory stays at a few chunks whatever the response size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

from ..dicom.pixels import PixelError

log = Logger()


class ClientGone(Exception):
    """The client disconnected while we were writing."""


@implementer(IPushProducer)
class StreamProducer:
    def __init__(self, request: Request) -> None:
        self._request = request
        self._paused: Deferred[None] | None = None
        self.stopped = False

    @property
    def paused(self) -> Deferred[None] | None:
        """Fires when the transport asks for more; None while not paused."""
        return self._paused

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()

    async def write(self, data: bytes) -> None:
        """Write ``data``, then wait while the transport asks us to pause."""
        if self.stopped:
            raise ClientGone()
        self._request.write(data)
        while self._paused is not None:
            await self._paused
        if self.stopped:
            raise ClientGone()


async def stream(request: Request, chunks: AsyncIterator[bytes]) -> None:
    """Write every chunk of ``chunks`` to ``request`` with backpressure.

    When the client goes away (or Klein cancels the route), the iterator is
    closed at once, so no more is read or computed for nobody. When producing
    fails half-way, the status line is long gone: the connection is aborted so
    the client sees a broken response rather than a complete-looking one.
    """
    producer = StreamProducer(request)
    request.registerProducer(producer, True)
    sent = 0
    try:
        async for data in chunks:
            await producer.write(data)
            sent += len(data)
    except (ClientGone, CancelledError):
        producer.stopped = True
        log.info("response stopped after {sent} bytes: the client went away", sent=sent)
    except Exception as exc:
        producer.stopped = True
        if isinstance(exc, PixelError):  # a damaged stored object, not a bug
            log.warn("response aborted after {sent} bytes: {reason}", sent=sent, reason=exc.reason)
        else:
            log.failure("response aborted after {sent} bytes", sent=sent)
        abort(request)
    finally:
        unregister(request)
        await close_iterator(chunks)


def unregister(request: Request) -> None:
    # After the connection is lost an HTTP/1.x channel has no transport left
    # to unregister from; there is nothing to undo then. An HTTP/2 stream
    # has no transport of its own (it writes to its connection) and always
    # takes the call.
    channel = getattr(request, "channel", None)
    if channel is not None and (_is_http2_stream(channel) or getattr(channel, "transport", None) is not None):
        request.unregisterProducer()


def abort(request: Request) -> None:
    """Cut the response so the client sees it broken: HTTP/1.x closes the
    connection, an HTTP/2 stream is reset (RST_STREAM) and its connection's
    other streams go on."""
    channel = getattr(request, "channel", None)
    target = channel if _is_http2_stream(channel) else getattr(channel, "transport", None)
    abort = getattr(target, "abortConnection", None)
    if abort is not None:
        abort()


def _is_http2_stream(channel: object) -> bool:
    """Whether ``channel`` is one stream of an HTTP/2 connection (twisted.web's
    H2Stream, told apart by its stream id)."""
    return isinstance(getattr(channel, "streamID", None), int)


async def close_iterator(iterator: object) -> None:
    """Close an async generator now (its ``finally`` runs: files close, work
    stops); other async iterables have nothing to close."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
