"""The CouchDB store's change feed (README "Change feed").

Two kinds of documents:

``e:<SOPInstanceUID>:<token>`` — an *event*, written by the frontend that
    changed the instance, after the instance document and before the request
    is acknowledged. ``token`` is the ``ev`` field the change wrote into the
    instance document, so the id is known from the instance document alone:
    writing it twice (the crash-repair sweep redoing an interrupted batch)
    is a conflict that changes nothing. Events are never modified, so each
    appears exactly once in ``_changes``; they replicate like any document,
    so every site learns every site's events.

``c:<site>:<n, 12 digits>`` — an *entry* of this database's feed: number
    ``n`` given to one event. ``site`` is a random id kept in
    ``_local/dicomweb-changefeed`` (local documents do not replicate), so
    each database numbers the events it sees in its own series and replicated
    entries of another site are never read here.

Numbering (:class:`ChangeNumbering`, one per frontend): read ``_changes``
from the position recorded in the newest entry (before answering a read,
and continuously with one long-poll while clients wait), and give each event not yet
numbered the next number by *creating* ``c:<site>:<n+1>`` (no revision: the
write fails with 409 if that number is taken). So every number is taken
exactly once, by one event, whichever of several frontends gets there first.
As every frontend reads the same feed order from the same newest entry, a
number taken by another frontend holds the same event; when it does not
(frontends out of step), the loser reads the entries it missed (they carry
the event id and the ``_changes`` position they were made at) and goes on
from the newest one.
A number is only tried after the previous one exists, so numbers are dense;
a reader answers only the unbroken run after the offset it was given, so it
never passes a number that is not yet visible to it. Entries are never
changed or deleted: what a consumer read under a number stays true.

Limits (README "Change feed"): sequences are per database: a consumer that
moves to another site's server starts again from that site's numbers. An
event is numbered when some frontend next reads or waits on the feed (a
read first numbers what is pending), so the numbering costs nothing while
nobody consumes the feed, and a waiter sees an event one ``_changes``
round trip after its write. On a CouchDB cluster, ``_changes`` may repeat
changes after a node failure; an event already among the newest
:data:`REMEMBER` numbered ones is not numbered again, one older than that
would be. The feed grows without bound (one small document per event).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredLock
from twisted.internet.task import deferLater
from twisted.logger import Logger

from .base import StoreUnavailable
from .changes import CREATE, DELETE, MAX_PAGE, Action, Change, ChangeSignal, state_of
from .couchdocs import CouchDocs, instance_id
from .couchfollow import START, changes_since
from .couchhttp import Conflict, CouchError

log = Logger()

SITE_DOC = "_local/dicomweb-changefeed"
EVENT_PREFIX = "e:"
ENTRY_PREFIX = "c:"
DIGITS = 12
#: Event ids of the newest entries kept in memory (duplicates among them are skipped).
REMEMBER = 10_000
#: How long one long-poll of ``_changes`` waits (seconds).
LONGPOLL = 25.0
#: Rows of ``_changes`` read per request while numbering.
CHANGES_PAGE = 500


def new_token() -> str:
    """A fresh ``ev`` token for an instance document change that is an event."""
    return uuid.uuid4().hex[:16]


def token_of(doc: dict[str, Any]) -> str:
    """The event token of an instance document; documents written before
    the change feed existed have none: their revision stands in."""
    return str(doc.get("ev") or "r" + doc["_rev"])


def event_doc(action: Action, doc: dict[str, Any], token: str) -> dict[str, Any]:
    """The event of a change of ``doc`` (an instance document with its UIDs)."""
    return {"_id": f"{EVENT_PREFIX}{doc['sop']}:{token}", "doctype": "event", "action": action,
            "study": doc["study"], "series": doc["series"], "sop": doc["sop"], "ev": token, "at": time.time()}


async def write_events(docs: CouchDocs, events: Sequence[dict[str, Any]]) -> None:
    """Create event documents; one that exists already is the same event."""
    await docs.create_new(list(events))


class ChangeNumbering:
    """This frontend's follower and reader of the feed (module docstring)."""

    def __init__(self, docs: CouchDocs, reactor: Any) -> None:
        self.docs = docs
        self.client = docs.client
        self.reactor = reactor
        self.signal = ChangeSignal(reactor)
        self.site = ""
        self.last = 0  # the newest number known here
        self.since: Any = START  # the _changes position of that number's event
        self._recent: deque[str] = deque()
        self._recent_set: set[str] = set()
        self._lock = DeferredLock()
        self._follower: Deferred[None] | None = None  # runs while _waiters > 0
        self._waiters = 0
        self._generation = 0

    # -- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        self.site = await self._site()
        await self._load_tail()

    async def close(self) -> None:
        self._stop_following()

    def _start_following(self) -> None:
        if self._follower is None:
            self._follower = Deferred.fromCoroutine(self._follow(self._generation + 1))
            self._follower.addErrback(lambda f: f.trap(CancelledError) and None)

    def _stop_following(self) -> None:
        self._generation += 1  # a follower whose cancellation is lost stops at its next turn
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()

    async def _site(self) -> str:
        for _ in range(5):
            doc = await self.docs.get(SITE_DOC)
            if doc is not None:
                return str(doc["site"])
            try:
                await self.docs.put(SITE_DOC, {"site": uuid.uuid4().hex[:12]})
            except Conflict:
                continue  # another frontend made it first
        raise StoreUnavailable("could not read the change feed's site id")

    async def _load_tail(self) -> None:
        """Start from the newest entry: its number, its position, and the
        events of the newest :data:`REMEMBER` entries."""
        rows = (await self.client.request("GET", "_all_docs", params={
            "startkey": _json(self._entry_id(10 ** DIGITS - 1)), "endkey": _json(self._entry_id(0)),
            "descending": "true", "limit": REMEMBER, "include_docs": "true"})).get("rows", [])
        for row in reversed(rows):
            entry = row["doc"]
            if self.last and entry["n"] != self.last + 1:
                # A hole (a bulk write cut short): go on from before it, so
                # the next numbering fills it (the entries after it hold the
                # same events and are taken as they are met).
                break
            self._take(entry)

    def _entry_id(self, n: int) -> str:
        return f"{ENTRY_PREFIX}{self.site}:{n:0{DIGITS}d}"

    def _take(self, entry: dict[str, Any]) -> None:
        """Note an entry that exists (made here or by another frontend)."""
        if entry["n"] <= self.last:
            return
        self.last, self.since = entry["n"], entry["since"]
        self._recent.append(entry["event"])
        self._recent_set.add(entry["event"])
        while len(self._recent) > REMEMBER:
            self._recent_set.discard(self._recent.popleft())

    # -- numbering --------------------------------------------------------------

    async def _follow(self, generation: int) -> None:
        """Wait on ``_changes`` (one long-poll at a time), number, wake waiters;
        until :meth:`_stop_following` starts another generation."""
        self._generation = generation
        delay = 0.5
        while self._generation == generation:
            try:
                await changes_since(self.client, self.since, limit=1, wait=LONGPOLL)
                await self.catch_up()
                delay = 0.5
            except (StoreUnavailable, CouchError) as exc:
                log.warn("change feed follower: {error}; again in {delay:.0f}s", error=type(exc).__name__, delay=delay)
                await deferLater(self.reactor, delay)
                delay = min(delay * 2, 30)

    async def catch_up(self) -> None:
        """Number every event written so far that has no number yet."""
        await self._lock.acquire()
        before = self.last
        try:
            while True:
                page = await changes_since(self.client, self.since, limit=CHANGES_PAGE)
                if not await self._number(page.ids(EVENT_PREFIX)):
                    await self._resync()  # another frontend numbered some: go on after its newest entry
                    continue
                if page.rows:
                    self.since = page.last_seq  # every event up to there has its number
                if len(page.rows) < CHANGES_PAGE:
                    return
        finally:
            self._lock.release()
            if self.last != before:
                self.signal.notify()

    async def _number(self, events: list[tuple[str, Any]]) -> bool:
        """Give the events the next numbers, in feed order, in one bulk write.

        Number ``n`` is the n-th event of the feed order after the newest
        entry, so a frontend that finds ``c:<n>`` taken (409) normally finds
        the same event in it, and goes on. Another event there means two
        frontends saw the feed in different orders (possible on a CouchDB
        cluster only): then this returns False and numbering goes on after the
        newest entry (module docstring, "Limits")."""
        fresh = [(e, seq) for e, seq in events if e not in self._recent_set]
        if not fresh:
            return True
        found = await self.docs.get_docs(e for e, _ in fresh)
        entries: list[dict[str, Any]] = []
        for event_id, seq in fresh:
            event = found.get(event_id)
            if event is None:
                continue  # deleted meanwhile (never by this store)
            n = self.last + 1 + len(entries)
            entries.append({"_id": self._entry_id(n), "doctype": "change", "n": n, "event": event_id, "since": seq,
                            **{k: event[k] for k in ("action", "study", "series", "sop", "ev", "at")}})
        rows = {r.get("id"): r for r in await self.docs.bulk(entries)}
        taken = [e["_id"] for e in entries if (rows.get(e["_id"]) or {}).get("error") == "conflict"]
        theirs = await self.docs.get_docs(taken) if taken else {}
        for entry in entries:
            row = rows.get(entry["_id"]) or {"error": "missing"}
            if row.get("error") == "conflict":
                other = theirs.get(entry["_id"])
                if other is None or other.get("event") != entry["event"]:
                    if other is not None:
                        log.warn("change feed: frontends saw _changes in different orders")
                    return False
                entry = other
            elif row.get("error"):
                raise CouchError(500, str(row.get("error")), str(row.get("reason", "")))
            self._take(entry)
        return True

    async def _resync(self) -> None:
        """Take the entries made after ours by other frontends."""
        while True:
            page = await self._entries(self.last, 1000)
            for entry in page:
                self._take(entry)
            if len(page) < 1000:
                return

    # -- reading -----------------------------------------------------------------

    async def _entries(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """The unbroken run of entries after ``offset``, at most ``limit``."""
        rows = (await self.client.request("GET", "_all_docs", params={
            "startkey": _json(self._entry_id(offset + 1)), "endkey": _json(self._entry_id(10 ** DIGITS - 1)),
            "limit": limit, "include_docs": "true"})).get("rows", [])
        out: list[dict[str, Any]] = []
        for row in rows:
            doc = row.get("doc")
            if not doc or doc.get("n") != offset + 1 + len(out):
                break
            out.append(doc)
        return out

    async def changes(self, offset: int, limit: int, metadata: bool) -> list[Change]:
        await self.catch_up()
        return await self._changes(await self._entries(offset, min(limit, MAX_PAGE)), metadata)

    async def latest(self, metadata: bool) -> Change | None:
        await self.catch_up()
        if not self.last:
            return None
        found = await self._changes(await self._entries(self.last - 1, 1), metadata)
        return found[0] if found else None

    async def wait(self, offset: int, timeout: float) -> bool:
        """Wait for an entry after ``offset``. The follower runs while anyone
        waits: a frontend nobody waits on adds no load to CouchDB (a read
        numbers what is pending itself)."""
        self._waiters += 1
        first = self._follower is None
        self._start_following()
        try:
            if first and self.last <= offset:
                await self.catch_up()  # else the running follower keeps ``last`` current
            return await self.signal.wait(offset, timeout, self._known)
        finally:
            self._waiters -= 1
            if not self._waiters:
                self._stop_following()

    async def _known(self) -> int:
        return self.last

    async def _changes(self, entries: list[dict[str, Any]], metadata: bool) -> list[Change]:
        """Entries with their state as of now (from the instance documents)."""
        docs = await self.docs.get_docs(instance_id(e["sop"]) for e in entries) if entries else {}
        out = []
        for entry in entries:
            doc = docs.get(instance_id(entry["sop"]))
            exists = doc is not None and doc.get("state") == "stored"
            latest = doc is not None and token_of(doc) == entry["ev"]
            state = state_of(entry["action"], exists, latest)
            meta = doc.get("meta") if doc is not None and metadata and state == "Current" else None
            out.append(Change(entry["n"], entry["study"], entry["series"], entry["sop"], entry["action"],
                              float(entry["at"]), state, meta.encode("utf-8") if meta else None))
        return out


def created_events(written: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Create events of instance documents just written by a STOW."""
    return [event_doc(CREATE, doc, doc["ev"]) for doc in written]


def repair_events(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of instance documents whose writer may have stopped before
    writing them (crash repair): a Create for a stored one, a Delete for a
    rejected or deleted one, when the document names its event (``ev``)."""
    out: list[dict[str, Any]] = []
    for doc in docs:
        if doc.get("ev") and doc.get("study") and doc.get("series") and doc.get("sop"):
            out.append(event_doc(CREATE if doc.get("state") == "stored" else DELETE, doc, doc["ev"]))
    return out


def _json(value: str) -> str:
    return json.dumps(value)
