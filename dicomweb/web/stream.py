"""Streaming responses: a push producer fed by an async iterator of chunks.

The producer is registered on the request, so Twisted pauses it when the
client reads slower than we produce (backpressure) and stops it when the
client goes away; memory stays at a few chunks whatever the response size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


class ClientGone(Exception):
    """The client disconnected while we were writing."""


@implementer(IPushProducer)
class StreamProducer:
    def __init__(self, request: Any) -> None:
        self._request = request
        self._paused: Deferred[None] | None = None
        self.stopped = False

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


async def stream(request: Any, chunks: AsyncIterator[bytes]) -> None:
    """Write every chunk of ``chunks`` to ``request`` with backpressure."""
    producer = StreamProducer(request)
    request.registerProducer(producer, True)
    try:
        async for data in chunks:
            await producer.write(data)
    except (ClientGone, CancelledError):
        producer.stopped = True
    finally:
        request.unregisterProducer()
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
