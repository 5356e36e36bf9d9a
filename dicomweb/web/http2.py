"""HTTP/2 connections (RFC 9113), negotiated by ALPN over TLS.

twisted.web serves a connection that negotiated ``h2`` with its own HTTP/2
channel, one request object per stream, and passes flow control on to the
response's producer: a stream whose send window is used up pauses its
producer, a WINDOW_UPDATE resumes it. So a slow reader holds the server to
at most one stream window of queued bytes per stream (65,535 by default; the
client chooses), whatever the answer's size.

One gap is closed here. twisted.web's send loop keeps a stream with queued
data and no window in its rotation and reschedules itself at once, so a
client that stops reading (or just reads slower than the server writes) made
the reactor spin at 100% CPU until the window opened (measured: a stalled
40-instance retrieve kept the server busy for as long as the client waited).
:class:`FlowControlledH2Connection` takes such a stream out of the rotation
until its window opens, and wakes the idle loop on WINDOW_UPDATE.
"""

from __future__ import annotations

from typing import Any

from twisted.web import http
from twisted.web._http2 import _END_STREAM_SENTINEL, H2Connection


class FlowControlledH2Connection(H2Connection):
    """twisted.web's HTTP/2 connection that idles while every stream with
    data to send is waiting for its peer's flow-control window."""

    def _sendPrioritisedData(self, *args: Any) -> None:
        super()._sendPrioritisedData(*args)
        for stream_id, queue in self._outboundStreamQueues.items():
            # A queue ending in END_STREAM alone may go: an empty DATA frame
            # with END_STREAM needs no window (RFC 9113 6.9.1).
            if queue and queue[0] is not _END_STREAM_SENTINEL \
                    and self.conn.local_flow_control_window(stream_id) <= 0:
                self.priority.block(stream_id)

    def _handleWindowUpdate(self, event: Any) -> None:
        super()._handleWindowUpdate(event)  # unblocks the streams it opened
        waiting, self._sendingDeferred = self._sendingDeferred, None
        if waiting is not None:
            waiting.callback(None)


class GenericHTTPChannel(http._GenericHTTPChannelProtocol):
    """twisted.web's protocol switch (HTTP/1.x channel, or HTTP/2 when ALPN
    chose ``h2``) that uses :class:`FlowControlledH2Connection`."""

    def dataReceived(self, data: bytes) -> None:
        if self._negotiatedProtocol is None:
            negotiated = getattr(self._channel.transport, "negotiatedProtocol", None) or b"http/1.1"
            if negotiated == b"h2":
                self._switch_to_http2()
            self._negotiatedProtocol = negotiated  # type: ignore[assignment]  # declared None in the base
        self._channel.dataReceived(data)

    def _switch_to_http2(self) -> None:
        # The HTTP/1.x channel leaves the transport (as producer and timer)
        # before the HTTP/2 connection takes its place with the same site.
        old: Any = self._channel
        network_producer = old._networkProducer
        network_producer.unregisterProducer()
        old.setTimeout(None)
        transport = old.transport
        channel: Any = FlowControlledH2Connection()
        channel.requestFactory = self._requestFactory
        channel.site = self._site
        channel.factory = self._factory
        channel.timeOut = self._timeOut
        channel.callLater = self._callLater
        self._channel = channel
        channel.makeConnection(transport)
        network_producer.registerProducer(channel, True)


__all__ = ["FlowControlledH2Connection", "GenericHTTPChannel"]
