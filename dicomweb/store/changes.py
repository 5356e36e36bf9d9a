"""The change feed's store-side model, shared by both stores (README "Change feed").

A change is one event of one SOP Instance: ``Create`` (stored, stored again
over an older version, or restored by storing a rejected instance again) or
``Delete`` (deleted, or rejected: either way it left search and retrieval).
Each has an integer ``sequence``, strictly increasing in the order the store
recorded the events, dense (no gaps), never reused and never renumbered, so
a consumer that asks for the events after the last sequence it saw never
misses or repeats one.

The state of an event is computed when it is read, from what the store holds
then: ``Deleted`` when the instance is gone (deleted or rejected), else
``Current`` when the event is the instance's latest and a ``Create``, else
``Replaced`` (a later event of the same SOP Instance UID exists).

:class:`ChangeSignal` is how a store wakes readers waiting for an event
(the long-poll of ``GET /changefeed?timeout=S``) without polling.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from twisted.internet.defer import Deferred

from ..twistedtypes import IReactor

Action = Literal["Create", "Delete"]
State = Literal["Current", "Replaced", "Deleted"]
CREATE: Action = "Create"
DELETE: Action = "Delete"

#: Events a store answers per read at most (the API's ``limit`` maximum).
MAX_PAGE = 200


@dataclass(frozen=True)
class Change:
    """One change-feed entry as a store answers it."""

    sequence: int
    study_uid: str
    series_uid: str
    sop_uid: str
    action: Action
    timestamp: float  # seconds since the epoch (UTC)
    state: State
    #: The stored DICOM JSON of the instance (relative BulkDataURIs), only
    #: when asked for and the state is Current.
    metadata: bytes | None = None


def state_of(action: Action, exists: bool, latest: bool) -> State:
    """The read-time state of an event (see the module docstring)."""
    if not exists:
        return "Deleted"
    return "Current" if latest and action == CREATE else "Replaced"


class ChangeSignal:
    """Readers waiting for the feed to pass a sequence, woken when it does.

    ``notify()`` is called on the reactor thread after a change was
    committed (or seen, for a store that learns of changes by following
    another process). A waiter also looks again every ``poll`` seconds, for
    writers it cannot hear (another process writing the same store).
    """

    def __init__(self, reactor: IReactor, poll: float = 1.0) -> None:
        self._reactor = reactor
        self._poll = poll
        self._waiters: list[Deferred[None]] = []

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    async def wait(self, after: int, timeout: float, latest: Callable[[], Awaitable[int]]) -> bool:
        """Wait until ``latest()`` passes ``after`` (True) or ``timeout``
        seconds pass (False)."""
        deadline = self._reactor.seconds() + timeout
        while True:
            if await latest() > after:
                return True
            left = deadline - self._reactor.seconds()
            if left <= 0:
                return False
            d: Deferred[None] = Deferred()
            self._waiters.append(d)
            call = self._reactor.callLater(min(left, self._poll), lambda d=d: d.called or d.callback(None))
            try:
                await d
            finally:
                if call.active():
                    call.cancel()
                if d in self._waiters:
                    self._waiters.remove(d)
