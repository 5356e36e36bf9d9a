"""Prometheus metrics: requests by route and status, latency, bytes, store
latency and stored instances.

Labels never carry patient data: a request's route label is its path with
every UID segment replaced by its role (``/studies/{study}/series/{series}``),
which also keeps label cardinality fixed.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from twisted.web.http import Request

from ..dicom.query import Query
from ..store.base import InstanceRecord, Spool, Store, StoreItem, StoreOutcome
from ..store.changes import Change
from .stream import close_iterator

T = TypeVar("T")

_UID_SEGMENT = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_ROLE_AFTER = {"studies": "{study}", "series": "{series}", "instances": "{instance}", "frames": "{frames}",
               "bulk": "{path}", "reject": "{code}"}
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def route_label(path: bytes | str) -> str:
    """``/studies/1.2.3/series/4.5`` -> ``/studies/{study}/series/{series}``."""
    if isinstance(path, bytes):
        return _route_label_of_bytes(path)
    return _route_label(path)


@lru_cache(maxsize=1024)
def _route_label_of_bytes(path: bytes) -> str:
    # The same paths come again and again (searches, a viewer's series); bounded,
    # so a stream of distinct instance paths only costs the computation.
    return _route_label(path.decode("latin-1"))


def _route_label(text: str) -> str:
    text = text.split("?", 1)[0]
    segments = [s for s in text.split("/") if s]
    out: list[str] = []
    for i, segment in enumerate(segments):
        previous = segments[i - 1] if i else ""
        if previous in _ROLE_AFTER and previous != segment:
            out.append(_ROLE_AFTER[previous])
        elif _UID_SEGMENT.match(segment) or len(segment) > 64:
            out.append("{value}")
        else:
            out.append(segment if len(out) < 8 else "...")
        if previous == "bulk":
            break  # a bulk path may have many segments; they are one value
    return "/" + "/".join(out)


class Metrics:
    """One registry per service (tests run several services in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dicomweb_http_requests", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("dicomweb_http_request_duration_seconds", "Time from request received to response end",
                                 ["route", "method"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.bytes_in = Counter("dicomweb_http_request_bytes", "Request body bytes", ["route"], registry=self.registry)
        self.bytes_out = Counter("dicomweb_http_response_bytes", "Response body bytes", ["route"], registry=self.registry)
        self.instances = Counter("dicomweb_instances_stored", "STOW outcomes per instance", ["outcome"],
                                 registry=self.registry)
        self.store_latency = Histogram("dicomweb_store_operation_duration_seconds", "Store call latency",
                                       ["store", "operation"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("dicomweb_http_requests_in_flight", "Requests being processed", registry=self.registry)
        self.changefeed_waiters = Gauge("dicomweb_changefeed_waiters", "Change-feed long-polls waiting now",
                                        registry=self.registry)
        self.cache_lookups = Counter("dicomweb_metadata_cache_lookups", "Lookups of compressed study/series metadata",
                                     ["result"], registry=self.registry)
        self.cache_bytes = Gauge("dicomweb_metadata_cache_bytes", "Bytes of compressed metadata kept",
                                 registry=self.registry)
        self.derived = Counter("dicomweb_derived_frames", "Derived frame cache: hit, miss, precomputed", ["result"],
                               registry=self.registry)
        # Route labels have fixed cardinality (see route_label), so this stays small.
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}

    def observe_request(self, request: Request) -> None:
        route = route_label(request.path)
        method = request.method.decode("latin-1", "replace") if isinstance(request.method, bytes) else str(request.method)
        # The label children of one (route, method, status), found once: a
        # labels() lookup takes a lock and builds tuples, four per request.
        key = (route, method, request.code)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(request.code)), self.latency.labels(route, method),
                self.bytes_in.labels(route), self.bytes_out.labels(route))
        count, latency, bytes_in, bytes_out = children
        count.inc()
        started = getattr(request, "received_at", None)
        if started is not None:
            latency.observe(time.monotonic() - started)
        bytes_in.inc(getattr(request, "body_bytes", 0))
        bytes_out.inc(request.sentLength or 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class InstrumentedStore:
    """A :class:`~dicomweb.store.base.Store` that times each call of another.

    Histogram ``dicomweb_store_operation_duration_seconds`` with labels
    (store name, operation): ``store_batch``, ``instances``, ``metadata``,
    ``version``, ``read``, ``search``, ``ready``, ``delete``, ``reject``, ``changes``, and ``chunk``
    (the wait for each chunk of ``chunks``). Lifecycle calls and
    ``local_path`` (no I/O) are passed through untimed.
    """

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self._store = store
        self.name = store.name
        self._histogram = metrics.store_latency
        # One label child per operation, found on its first call (a labels()
        # lookup takes a lock; an operation never called is not exposed).
        self._timers: dict[str, Any] = {}

    @property
    def spool(self) -> Spool:
        return self._store.spool

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        start = time.monotonic()
        try:
            return await call
        finally:
            self._timer(operation).observe(time.monotonic() - start)

    def _timer(self, operation: str) -> Any:
        timer = self._timers.get(operation)
        if timer is None:
            timer = self._timers[operation] = self._histogram.labels(self.name, operation)
        return timer

    async def open(self) -> None:
        await self._store.open()

    async def close(self) -> None:
        await self._store.close()

    async def ready(self) -> bool:
        return await self._timed("ready", self._store.ready())

    async def store_batch(self, items: Sequence[StoreItem]) -> list[StoreOutcome]:
        return await self._timed("store_batch", self._store.store_batch(items))

    async def instances(self, study: str, series: str | None = None,
                        sop: str | None = None) -> list[InstanceRecord]:
        return await self._timed("instances", self._store.instances(study, series, sop))

    async def metadata(self, study: str, series: str | None = None,
                       sop: str | None = None) -> list[bytes]:
        return await self._timed("metadata", self._store.metadata(study, series, sop))

    async def version(self, study: str, series: str | None = None) -> str:
        return await self._timed("version", self._store.version(study, series))

    async def read(self, record: InstanceRecord, offset: int, length: int) -> bytes:
        return await self._timed("read", self._store.read(record, offset, length))

    async def chunks(self, record: InstanceRecord, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        timer = self._timer("chunk")
        iterator = self._store.chunks(record, chunk_size)
        try:
            while True:
                start = time.monotonic()
                try:
                    data = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                timer.observe(time.monotonic() - start)
                yield data
        finally:
            await close_iterator(iterator)

    def local_path(self, record: InstanceRecord) -> str | None:
        return self._store.local_path(record)

    async def search(self, query: Query) -> list[dict[str, Any]]:
        return await self._timed("search", self._store.search(query))

    async def delete(self, study: str, series: str | None = None, sop: str | None = None) -> int:
        return await self._timed("delete", self._store.delete(study, series, sop))

    async def reject(self, study: str, series: str | None, sop: str | None, code: str, scheme: str) -> int:
        return await self._timed("reject", self._store.reject(study, series, sop, code, scheme))

    async def purge_rejected(self, older_than: float) -> int:
        return await self._store.purge_rejected(older_than)


    async def changes(self, offset: int, limit: int, metadata: bool) -> list[Change]:
        return await self._timed("changes", self._store.changes(offset, limit, metadata))

    async def latest_change(self, metadata: bool) -> Change | None:
        return await self._timed("changes", self._store.latest_change(metadata))

    async def wait_changes(self, offset: int, timeout: float) -> bool:
        # Untimed: its duration is how long a client chose to wait.
        return await self._store.wait_changes(offset, timeout)
