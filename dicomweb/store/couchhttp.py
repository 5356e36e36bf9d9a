"""A small CouchDB HTTP client on treq: pooled, bounded, timed out, retried.

Every call goes through :meth:`CouchClient.request`:

- one persistent :class:`HTTPConnectionPool` for the service's lifetime;
- at most ``concurrency`` requests in flight (a ``DeferredSemaphore``), held
  until the response headers (streams) or the whole JSON body (everything
  else) have arrived, so slow WADO clients never starve STOW;
- a timeout on every call (``Deferred.addTimeout``: our own timeouts are told
  apart from a cancellation by the web client going away);
- transient failures (connection refused or lost, timeouts, 502/503/504) are
  retried with exponential backoff for up to ``retry_for`` seconds, then
  :class:`StoreUnavailable` is raised (the web layer answers 503 +
  Retry-After). Nothing is remembered between calls, so the client recovers
  by itself as soon as CouchDB answers again.

Credentials are sent as a Basic ``Authorization`` header and never appear in
a URL that is logged (:attr:`CouchClient.safe_url`).
"""

from __future__ import annotations

import base64
import os
from collections import deque
from collections.abc import Callable, Mapping
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import treq
from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, DeferredSemaphore, TimeoutError
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import _newclient
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from ..tlsclient import https_policy
from ..twistedtypes import IReactor
from .base import StoreUnavailable

log = Logger()

#: Exceptions that mean "CouchDB did not answer (this time)".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    net_error.ConnectError,
    net_error.ConnectionLost,
    net_error.ConnectionDone,
    net_error.TimeoutError,
    TimeoutError,
    _newclient.ResponseNeverReceived,
    _newclient.RequestTransmissionFailed,
    _newclient.ResponseFailed,
    ConnectionError,
)
TRANSIENT_STATUS = frozenset({502, 503, 504})


class CouchError(Exception):
    """CouchDB answered with an error status (``error``/``reason`` from its body)."""

    def __init__(self, status: int, error: str = "", reason: str = "") -> None:
        super().__init__(f"CouchDB {status} {error}: {reason}")
        self.status = status
        self.error = error
        self.reason = reason


class Conflict(CouchError):
    """409: the document changed since its revision was read."""


class Missing(CouchError):
    """404: no such database, document or attachment."""


class _Transient(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``http://u:p@host:5984/`` -> (``http://host:5984``, ``u``, ``p``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the CouchDB URL must be http(s)://host[:port]")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    from urllib.parse import unquote

    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), user, password


def doc_path(doc_id: str) -> str:
    """URL path of a document id; ``_local/``/``_design/`` keep their slash."""
    for prefix in ("_local/", "_design/"):
        if doc_id.startswith(prefix):
            return prefix + quote(doc_id[len(prefix):], safe="")
    return quote(doc_id, safe="")


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" line per pooled connection


_RETRYABLE: tuple[type[BaseException], ...] = (_Transient, *TRANSIENT_ERRORS)


class CouchClient:
    def __init__(self, url: str, database: str, reactor: IReactor, *, user: str | None = None,
                 password: str | None = None, concurrency: int = 16, timeout: float = 30.0,
                 retry_for: float = 5.0, ca_file: str | None = None) -> None:
        base, url_user, url_password = split_credentials(url)
        self.base = base
        self.database = database
        self.safe_url = f"{base}/{database}"  # never holds credentials: safe to log
        self.reactor = reactor
        self.timeout = timeout
        self.retry_for = retry_for
        user, password = user or url_user, password or url_password
        self._auth: bytes | None = None
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode())
            self._auth = b"Basic " + token
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = concurrency
        self.pool.cachedConnectionTimeout = 60
        self.pool._factory = _QuietFactory
        # https:// URLs: system CAs, or only the CAs of --couchdb-ca.
        agent = Agent(reactor, contextFactory=https_policy(ca_file), pool=self.pool)
        self.http = HTTPClient(agent)
        self.semaphore = DeferredSemaphore(concurrency)

    def url(self, path: str = "", params: Mapping[str, Any] | None = None, root: bool = False) -> str:
        out = self.base + "/" + ("" if root else quote(self.database, safe="") + ("/" if path else "")) + path
        if params:
            out += "?" + urlencode(params)
        return out

    def _headers(self, extra: Mapping[str, str] | None) -> dict[bytes, list[bytes]]:
        headers: dict[bytes, list[bytes]] = {b"accept": [b"application/json"]}
        if self._auth is not None:
            headers[b"authorization"] = [self._auth]
        for name, value in (extra or {}).items():
            headers[name.lower().encode()] = [value.encode("latin-1")]
        return headers

    async def close(self) -> None:
        await self.pool.closeCachedConnections()

    # -- the one entry point --------------------------------------------------

    async def request(self, method: str, path: str = "", *, params: Mapping[str, Any] | None = None,
                      json: Any = None, body: Callable[[], Any] | None = None,
                      headers: Mapping[str, str] | None = None, timeout: float | None = None,
                      root: bool = False, stream: bool = False, retry: bool = True, quiet: bool = False) -> Any:
        """Send a request; return the decoded JSON body (or, with ``stream``,
        the :class:`IResponse` whose body is still to be read).

        Raises :class:`Missing` (404), :class:`Conflict` (409),
        :class:`CouchError` (other errors) or :class:`StoreUnavailable`
        (logged as a warning unless ``quiet``: a long poll that ran out).
        """
        url = self.url(path, params, root)
        all_headers = self._headers(headers)
        timeout = timeout or self.timeout
        deadline = self.reactor.seconds() + (self.retry_for if retry else 0)
        delay = 0.05
        while True:
            try:
                return await self._once(method, url, all_headers, json, body, timeout, stream)
            except _RETRYABLE as exc:
                now = self.reactor.seconds()
                if now + delay > deadline:
                    (log.debug if quiet else log.warn)("CouchDB at {url} unavailable: {method} failed ({error})",
                             url=self.safe_url, method=method, error=_describe(exc))
                    raise StoreUnavailable("CouchDB is unavailable") from None
                log.debug("CouchDB {method} failed ({error}); retrying in {delay:.2f}s",
                          method=method, error=_describe(exc), delay=delay)
                await deferLater(self.reactor, delay)
                delay = min(delay * 2, 1.0)

    async def _once(self, method: str, url: str, headers: dict[bytes, list[bytes]], json: Any,
                    body: Callable[[], Any] | None, timeout: float, stream: bool) -> Any:
        await self.semaphore.acquire()
        try:
            kwargs: dict[str, Any] = {"headers": headers}
            if json is not None:
                kwargs["json"] = json
            elif body is not None:
                kwargs["data"] = body()
            d = self.http.request(method, url, **kwargs)
            d.addTimeout(timeout, self.reactor)
            response = await d
            if response.code in TRANSIENT_STATUS:
                await _discard(response, self.reactor)
                raise _Transient(response.code)
            if response.code >= 400:
                payload = await _json_body(response, self.reactor, timeout)
                error = payload.get("error", "") if isinstance(payload, dict) else ""
                reason = payload.get("reason", "") if isinstance(payload, dict) else ""
                cls = {404: Missing, 409: Conflict}.get(response.code, CouchError)
                raise cls(response.code, str(error), str(reason))
            if stream:
                return response
            return await _json_body(response, self.reactor, timeout)
        finally:
            self.semaphore.release()

    # -- conveniences ---------------------------------------------------------

    async def get(self, path: str, **kwargs: Any) -> Any:
        return await self.request("GET", path, **kwargs)

    async def get_or_none(self, path: str, **kwargs: Any) -> Any:
        try:
            return await self.request("GET", path, **kwargs)
        except Missing:
            return None

    async def put(self, path: str, json: Any, **kwargs: Any) -> Any:
        return await self.request("PUT", path, json=json, **kwargs)

    async def post(self, path: str, json: Any, **kwargs: Any) -> Any:
        return await self.request("POST", path, json=json, **kwargs)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _newclient.ResponseNeverReceived | _newclient.ResponseFailed | _newclient.RequestTransmissionFailed):
        reasons = [r.value for r in getattr(exc, "reasons", []) if isinstance(r, Failure)]
        if reasons:
            return type(exc).__name__ + ": " + ", ".join(type(r).__name__ for r in reasons)
    return type(exc).__name__


async def _json_body(response: IResponse, reactor: IReactor, timeout: float) -> Any:
    d = treq.json_content(response)
    d.addTimeout(timeout, reactor)
    return await d


async def _discard(response: IResponse, reactor: IReactor) -> None:
    d = treq.content(response)
    d.addTimeout(10, reactor)
    try:
        await d
    except Exception:  # we are discarding it anyway
        pass


# -- request bodies: a byte range of a file, streamed ------------------------


@implementer(IBodyProducer)
class RangeProducer:
    """Streams ``length`` bytes of ``source`` from ``offset`` as a request body.

    Reads with ``os.pread`` when the source is a real file (no shared file
    position), else through a memory view (small in-memory bodies); writes
    at most ``chunk`` bytes at a time and honours pause/resume, so memory
    stays flat whatever the instance size.
    """

    def __init__(self, source: IO[bytes], offset: int, length: int, reactor: IReactor, chunk: int = 256 * 1024) -> None:
        self.source, self.offset, self.length, self.reactor, self.chunk = source, offset, length, reactor, chunk
        self._sent = 0
        self._paused = False
        self._stopped = False
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        try:
            self._fd: int | None = source.fileno()
        except (OSError, AttributeError, ValueError):
            self._fd = None

    def _read(self, offset: int, size: int) -> bytes:
        if self._fd is not None:
            return os.pread(self._fd, size, offset)
        getbuffer = getattr(self.source, "getbuffer", None)
        if getbuffer is not None:
            return bytes(getbuffer()[offset:offset + size])
        self.source.seek(offset)
        return self.source.read(size)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        done: Deferred[None] = Deferred()
        self._done = done
        self._pump()
        return done

    def _pump(self) -> None:
        assert self._consumer is not None and self._done is not None
        # Write a few chunks per reactor turn; stop while the transport is full.
        for _ in range(8):
            if self._paused or self._stopped:
                return
            remaining = self.length - self._sent
            if remaining <= 0:
                done, self._done = self._done, None
                if done is not None:
                    done.callback(None)
                return
            data = self._read(self.offset + self._sent, min(self.chunk, remaining))
            if not data:
                done, self._done = self._done, None
                if done is not None:
                    done.errback(EOFError("the source ended before the instance did"))
                return
            self._sent += len(data)
            self._consumer.write(data)
        self.reactor.callLater(0, self._pump)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self.reactor.callLater(0, self._pump)

    def stopProducing(self) -> None:
        self._stopped = True


# -- response bodies: a stream with backpressure -----------------------------


class BodyStream(Protocol):
    """Receives a response body; :meth:`next` hands it out chunk by chunk.

    Pauses the connection while more than ``high_water`` bytes wait unread
    (backpressure towards CouchDB), resumes when the reader catches up.
    """

    def __init__(self, high_water: int = 4 << 20) -> None:
        self.high_water = high_water
        self._queue: deque[bytes] = deque()
        self._size = 0
        self._paused = False
        self._ended: Failure | None = None
        self._waiter: Deferred[None] | None = None

    def dataReceived(self, data: bytes) -> None:
        self._queue.append(data)
        self._size += len(data)
        if self._size > self.high_water and not self._paused and self.transport is not None:
            self._paused = True
            self._producer().pauseProducing()
        self._wake()

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        self._ended = reason
        self._wake()

    def _producer(self) -> IPushProducer:
        # twisted.web's TransportProxyProducer (the adaptation checks it provides IPushProducer)
        return IPushProducer(self.transport)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    async def next(self) -> bytes | None:
        """The next chunk, or None at the end of the body."""
        while not self._queue:
            if self._ended is not None:
                if self._ended.check(ResponseDone, PotentialDataLoss):
                    return None
                raise StoreUnavailable("CouchDB connection lost while reading an attachment")
            self._waiter = Deferred()
            await self._waiter
        data = self._queue.popleft()
        self._size -= len(data)
        if self._paused and self._size < self.high_water // 2 and self.transport is not None:
            self._paused = False
            self._producer().resumeProducing()
        return data

    def abort(self) -> None:
        """Stop reading (the connection is closed, not reused)."""
        if self._ended is None and self.transport is not None:
            self._producer().stopProducing()


__all__ = [
    "BodyStream",
    "Conflict",
    "CouchClient",
    "CouchError",
    "Missing",
    "RangeProducer",
    "doc_path",
    "split_credentials",
]
