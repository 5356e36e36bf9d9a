"""How pynetdicom's threads reach the store, which lives on the reactor.

pynetdicom runs every association in a thread of its own, and its event
handlers are plain blocking functions.  The store's methods are asynchronous
and must run on the reactor thread, so a handler calls :meth:`Bridge.call`,
which starts the coroutine on the reactor (``blockingCallFromThread``) and
blocks only the association's thread until it finishes.  The reactor never
waits for a DIMSE peer.

The bridge also counts the calls in flight, so that stopping the service can
wait until every C-STORE that reached the store is durable and answered, and
refuses new calls once the service is stopping (a handler then answers "out
of resources" at once instead of waiting on a reactor about to stop).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import blockingCallFromThread

from ..twistedtypes import IReactor


class Stopping(RuntimeError):
    """The service is stopping: no new store work is started."""


class Bridge:
    """Run asynchronous store work on the reactor from a pynetdicom thread."""

    def __init__(self, reactor: IReactor) -> None:
        self.reactor = reactor
        self.closing = False
        self._in_flight: set[Deferred[Any]] = set()
        self._idle: list[Deferred[None]] = []

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``await fn(*args)`` on the reactor; its result or its exception,
        in the calling (non-reactor) thread."""
        if self.closing:
            raise Stopping("the server is stopping")
        return blockingCallFromThread(self.reactor, self._start, fn, args)

    def _start(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Deferred[Any]:
        # On the reactor thread.
        if self.closing:
            raise Stopping("the server is stopping")
        d: Deferred[Any] = maybeDeferred(fn, *args)  # a coroutine runs as a Deferred
        self._in_flight.add(d)
        d.addBoth(self._done, d)
        return d

    def _done(self, result: Any, d: Deferred[Any]) -> Any:
        self._in_flight.discard(d)
        if not self._in_flight:
            waiting, self._idle = self._idle, []
            for w in waiting:
                w.callback(None)
        return result

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def close(self) -> Deferred[None]:
        """Refuse new calls; fires (on the reactor) when none is in flight."""
        self.closing = True
        d: Deferred[None] = Deferred()
        if self._in_flight:
            self._idle.append(d)
        else:
            d.callback(None)
        return d


__all__ = ["Bridge", "Stopping"]
