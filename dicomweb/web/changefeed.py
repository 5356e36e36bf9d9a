"""``GET /changefeed`` and ``GET /changefeed/latest`` (README "Change feed").

Answers are JSON in the shape other DICOMweb servers made common: an array
of entries ``{"Sequence", "StudyInstanceUid", "SeriesInstanceUid",
"SopInstanceUid", "Action", "Timestamp", "State", "Metadata"}``. The events
and their states come from the store (:meth:`Store.changes`); this module
parses parameters, bounds the long-poll waiters and writes the JSON. The
stored metadata texts are spliced into the answer as bytes, not parsed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import parse_qs

from prometheus_client import Gauge
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.web.server import Request
from zope.interface import implementer

from ..store import Store
from ..store.changes import MAX_PAGE, Change
from .errors import HTTPError, bad_request

DEFAULT_LIMIT = 10
#: Longest long-poll wait a client may ask for (seconds).
MAX_TIMEOUT = 60.0
#: What a 503 for too many waiters tells the client to wait before retrying.
RETRY_AFTER = "1"
#: Seconds between keep-alive comments on an idle event stream.
HEARTBEAT = 15.0
#: An idle event stream looks whether its client went away this often (seconds).
GONE_CHECK = 1.0


class ChangeFeed:
    """The change-feed routes' logic over one store."""

    def __init__(self, store: Store, clock: IReactorTime, max_waiters: int = 100, gauge: Gauge | None = None) -> None:
        self.store = store
        self.clock = clock
        self.max_waiters = max_waiters
        self.waiting = 0
        self._gauge = gauge  # dicomweb_changefeed_waiters

    async def feed(self, request: Request, base: str) -> bytes | None:
        args = _args(request)
        offset = _integer(args, "offset", 0, 0, None)
        limit = _integer(args, "limit", DEFAULT_LIMIT, 1, MAX_PAGE)
        metadata = _flag(args, "includemetadata", True)
        timeout = _seconds(args, "timeout")
        if wants_event_stream(request.getHeader(b"accept")):
            await self.stream(request, base, _last_event_id(request, offset), metadata)
            return None
        changes = await self.store.changes(offset, limit, metadata)
        if not changes and timeout > 0:
            if await self._wait(offset, timeout):
                changes = await self.store.changes(offset, limit, metadata)
        request.setHeader(b"content-type", b"application/json")
        return b"[" + b",".join(entry(c, base) for c in changes) + b"]"

    async def latest(self, request: Request, base: str) -> bytes:
        args = _args(request)
        change = await self.store.latest_change(_flag(args, "includemetadata", True))
        request.setHeader(b"content-type", b"application/json")
        return b"{}" if change is None else entry(change, base)

    async def stream(self, request: Request, base: str, offset: int, metadata: bool) -> None:
        """Server-sent events (``Accept: text/event-stream``): every entry after
        ``offset`` (or the ``Last-Event-ID`` a reconnecting client sends), then
        each new one as it comes, until the client goes away (Klein cancels
        the route then). One event per entry: ``id:`` its Sequence, ``data:``
        its JSON; a comment line every :data:`HEARTBEAT` seconds keeps proxies
        from closing an idle stream. A stream is a waiter (the bound holds)."""
        self._enter()
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))
        flow = _Flow()
        request.registerProducer(flow, True)
        try:
            request.setHeader(b"content-type", b"text/event-stream")
            request.setHeader(b"cache-control", b"no-cache")
            request.write(b": dicomweb change feed\n\n")
            # Klein cancels this route when the client goes away; should that
            # cancellation land in a store request that is retried, the loop
            # stops by itself within GONE_CHECK seconds.
            written = self.clock.seconds()
            pending = True  # whether to read the feed (else only wait)
            while not gone:
                if pending:
                    changes = await self.store.changes(offset, MAX_PAGE, metadata)
                    if changes:
                        await flow.writable()  # a slow client holds the stream, not memory
                        if gone:
                            break
                        request.write(b"".join(b"id: %d\nevent: change\ndata: %s\n\n" % (c.sequence, entry(c, base))
                                               for c in changes))
                        offset, written = changes[-1].sequence, self.clock.seconds()
                        continue
                pending = await self.store.wait_changes(offset, GONE_CHECK)
                if not pending and not gone and self.clock.seconds() - written >= HEARTBEAT:
                    request.write(b": keep-alive\n\n")
                    written = self.clock.seconds()
        finally:
            flow.stopProducing()
            if not gone:
                request.unregisterProducer()
            self._leave()

    async def _wait(self, offset: int, timeout: float) -> bool:
        """Wait for an event after ``offset``: 503 when ``max_waiters`` wait already."""
        self._enter()
        try:
            return await self.store.wait_changes(offset, timeout)
        finally:
            self._leave()

    def _enter(self) -> None:
        if self.waiting >= self.max_waiters:
            raise HTTPError(503, f"more than {self.max_waiters} change-feed waiters; retry later",
                            {"Retry-After": RETRY_AFTER})
        self.waiting += 1
        if self._gauge is not None:
            self._gauge.inc()

    def _leave(self) -> None:
        self.waiting -= 1
        if self._gauge is not None:
            self._gauge.dec()


@implementer(IPushProducer)
class _Flow:
    """Backpressure of an event stream: twisted.web pauses it while the
    client's socket buffer is full; the stream writes only when resumed."""

    def __init__(self) -> None:
        self._resumed: Deferred[None] | None = None

    async def writable(self) -> None:
        if self._resumed is not None:
            await self._resumed

    def pauseProducing(self) -> None:
        if self._resumed is None:
            self._resumed = Deferred()

    def resumeProducing(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()


def entry(change: Change, base: str) -> bytes:
    """One entry as JSON; ``Metadata`` (stored DICOM JSON, its BulkDataURIs
    made absolute with ``base``) only when the store gave it."""
    head = json.dumps({
        "Sequence": change.sequence,
        "StudyInstanceUid": change.study_uid,
        "SeriesInstanceUid": change.series_uid,
        "SopInstanceUid": change.sop_uid,
        "Action": change.action,
        "Timestamp": timestamp(change.timestamp),
        "State": change.state,
    }, separators=(",", ":")).encode()
    if change.metadata is None:
        return head
    metadata = change.metadata.replace(b'"BulkDataURI":"', b'"BulkDataURI":"' + base.encode() + b"/")
    return head[:-1] + b',"Metadata":' + metadata + b"}"


def wants_event_stream(accept: bytes | None) -> bool:
    """Whether the client asks for server-sent events (and not JSON first)."""
    if not accept:
        return False
    types = [t.split(b";")[0].strip().lower() for t in accept.split(b",")]
    return b"text/event-stream" in types and b"application/json" not in types


def _last_event_id(request: Request, offset: int) -> int:
    """A reconnecting event-stream client's ``Last-Event-ID``, else ``offset``."""
    value = (request.getHeader(b"last-event-id") or b"").strip()
    if not value:
        return offset
    if not value.isdigit() or len(value) > 18:
        raise bad_request("Last-Event-ID must be a whole number")
    return int(value)


def timestamp(seconds: float) -> str:
    """ISO 8601 in UTC with microseconds: ``2026-12-05T18:00:00.123456Z``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _args(request: Request) -> dict[str, list[str]]:
    query = request.uri.split(b"?", 1)[1] if b"?" in request.uri else b""
    try:
        return parse_qs(query.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise bad_request("the query string is not UTF-8") from None


def _one(args: dict[str, list[str]], name: str) -> str | None:
    values = args.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise bad_request(f"{name} given more than once")
    return values[0].strip()


def _integer(args: dict[str, list[str]], name: str, default: int, low: int, high: int | None) -> int:
    text = _one(args, name)
    if text is None:
        return default
    if not text.isdigit() or len(text) > 18:
        raise bad_request(f"{name} must be a whole number")
    value = int(text)
    if value < low or (high is not None and value > high):
        raise bad_request(f"{name} must be between {low} and {high}" if high is not None
                          else f"{name} must be at least {low}")
    return value


def _flag(args: dict[str, list[str]], name: str, default: bool) -> bool:
    text = _one(args, name)
    if text is None:
        return default
    if text.lower() not in ("true", "false"):
        raise bad_request(f"{name} must be true or false")
    return text.lower() == "true"


def _seconds(args: dict[str, list[str]], name: str) -> float:
    text = _one(args, name)
    if text is None:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise bad_request(f"{name} must be a number of seconds") from None
    if not 0 <= value <= MAX_TIMEOUT:  # also refuses nan
        raise bad_request(f"{name} must be between 0 and {MAX_TIMEOUT:.0f} seconds")
    return value
