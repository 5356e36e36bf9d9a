"""Twisted helpers shared by the stores: running coroutines side by side,
and the retry and paging constants of optimistic-concurrency writes."""

from __future__ import annotations

from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, FirstError, gatherResults

T = TypeVar("T")

#: Attempts of a write that loses a revision race (409) before it gives up.
ATTEMPTS = 20
#: Attempts of a read (a search, an instance list) that the database
#: answered with an unexpected error: a CouchDB-API server's ``_find`` can
#: fail (pouchdb-server: 400) while the documents it reads are being
#: replaced. Pauses start at :data:`READ_BACKOFF` seconds and double (0.05,
#: 0.1, 0.2, 0.4: under a second in all); then the read is reported
#: unavailable (503 with Retry-After), never as a server error.
READ_ATTEMPTS = 5
READ_BACKOFF = 0.05
#: Documents per page of a keyset-paged read.
PAGE = 1000


async def gather(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``coros`` concurrently; their results in order.

    The first failure is raised as itself, not wrapped in
    :class:`~twisted.internet.defer.FirstError`; the other coroutines still
    run to their end (their failures are consumed, not logged as unhandled).
    """
    coros = list(coros)
    if not coros:
        return []
    if len(coros) == 1:
        return [await coros[0]]
    try:
        return list(await gatherResults([Deferred.fromCoroutine(c) for c in coros], consumeErrors=True))
    except FirstError as exc:
        exc.subFailure.raiseException()
        raise  # not reached: raiseException always raises
