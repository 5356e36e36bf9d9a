"""The repair follower of the CouchDB store: repairs what replication brings.

Every frontend computes study, series and patient documents and their QIDO
keys from the instance documents it can see when it writes
(:mod:`couchaggregates`). When a database replicates with another site,
documents arrive that no frontend of this site wrote: an instance stored at
the other site (whose study document there counted only what that site
had), and revisions that conflict with ours (both sites wrote the study
document, or the same SOP Instance UID, at once). The follower reads the
database's ``_changes`` feed (long poll) and, for

- an instance document written at another site (its ``site`` is not ours)
  or one with conflicting revisions: recomputes that instance's study, its
  series, their QIDO keys and the patient (the refresh a STOW runs, with
  ``ensure_keys``) when this site has a document of that study (else the
  study is new here, and the documents its own site computed follow);
- a study, series, patient or instance document with conflicting revisions:
  resolves the conflict. CouchDB and PouchDB pick the same winning revision
  at every replica (highest revision number, then highest revision id), so
  the follower keeps the winner, deletes the QIDO keys only a losing
  revision had, deletes the losing revisions (at every site that sees them:
  the same deletion, harmless twice), then recomputes the study as above.
  For the same SOP Instance UID stored at two sites at once this means the
  instance converges to one version at both sites (the other's bytes go
  with its revision), with aggregates and keys that agree with it.

Recomputing is idempotent and writes nothing when nothing changed, so
several frontends of one site following the same feed, or two sites
repairing the same study, converge instead of echoing. Revisions this
frontend wrote itself are skipped without reading them
(:meth:`CouchDocs.wrote`); instances written by another frontend of the same
site are read (their ``site`` is ours) but not recomputed: that frontend
recomputed them, and its journal repairs it if it died.

The position in the feed is kept in ``_local/dicomweb-follower`` (every
frontend of the site writes its last processed position there; each change
is processed at least once, by some frontend, because the position is
written after the change was processed). A frontend starting on a database
without that document starts from the beginning when it just set the
database up (a new replica filled by replication is repaired as it
arrives), else from the current position.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ..twistedtypes import IReactor
from . import couchsearch
from .base import StoreUnavailable
from .couchaggregates import Aggregates, LevelHints
from .couchdocs import CouchDocs
from .couchfollow import changes_since
from .couchhttp import CouchClient, CouchError, Missing, doc_path
from .couchpatients import patient_key

log = Logger()

CHECKPOINT_DOC = "_local/dicomweb-follower"
#: Changes read per request.
PAGE = 200
#: Seconds a long poll waits for a change before asking again.
LONG_POLL = 10.0
#: Seconds between two writes of the position (it is also written on stop).
CHECKPOINT_EVERY = 2.0
#: Seconds to wait before asking again after a short page of changes.
GATHER = 0.5
CAUGHT_UP_SAVE = 0.5


class Follower:
    """Follows one database's changes and repairs (see the module docstring)."""

    def __init__(self, docs: CouchDocs, aggregates: Aggregates, reactor: IReactor) -> None:
        self.docs = docs
        self.aggregates = aggregates
        self.reactor = reactor
        #: The last position processed (opaque; None before start).
        self.since: Any = None
        #: What was repaired since start: studies recomputed, conflicts resolved.
        self.repaired_studies = 0
        self.resolved_conflicts = 0
        self.last_change_at: float | None = None
        self._running = False
        self._loop: Deferred[None] | None = None
        self._wait: Deferred[Any] | None = None
        self._checkpoint_rev: str | None = None
        self._checkpoint_at = 0.0
        self._saved: Any = None

    async def start(self, fresh_database: bool) -> None:
        """Read the position (or choose one) and start following."""
        checkpoint = await self.docs.get(CHECKPOINT_DOC)
        if checkpoint is not None:
            self._checkpoint_rev = checkpoint["_rev"]
            self.since = self._saved = checkpoint.get("seq", 0)
        else:
            self.since = 0 if fresh_database else await self.docs.update_seq()
        self._running = True
        self._loop = ensureDeferred(self._run())

    async def stop(self) -> None:
        self._running = False
        if self._wait is not None:
            self._wait.cancel()
        if self._loop is not None:
            loop, self._loop = self._loop, None
            await loop
        try:
            await self._save(force=True)
        except (StoreUnavailable, CouchError):
            pass

    async def _run(self) -> None:
        delay = 0.5
        while self._running:
            asked = self.reactor.seconds()
            try:
                wait: Deferred[Any] = ensureDeferred(changes_since(self.docs.client, self.since, limit=PAGE,
                                                                   wait=LONG_POLL, all_revisions=True))
                self._wait = wait
                page = await wait
                self._wait = None
                await self.process(page.rows)
                self.since = page.last_seq
                await self._save(caught_up=len(page.rows) < PAGE)
                delay = 0.5
                if 0 < len(page.rows) < PAGE:
                    # Caught up while writes go on: let changes gather
                    # instead of asking again after every write (a poll per
                    # write took half of pouchdb-server's time under STOW).
                    await deferLater(self.reactor, GATHER)
                    await self._save(caught_up=True)
            except Exception as exc:  # the loop must outlive any one failure
                self._wait = None
                if not self._running:
                    return
                if isinstance(exc, StoreUnavailable) and self.reactor.seconds() - asked >= LONG_POLL:
                    # The long poll ran out without an answer (see
                    # couchfollow.changes_since). Ask again.
                    await self._save(caught_up=True)
                    continue
                if isinstance(exc, StoreUnavailable | CouchError):
                    log.warn("repair follower paused: {error}", error=type(exc).__name__)
                else:
                    log.failure("repair follower failed; retrying")
                await deferLater(self.reactor, delay)
                delay = min(delay * 2, 10.0)

    async def process(self, rows: Iterable[dict[str, Any]]) -> set[str]:
        """Repair what ``rows`` of the feed (``style=all_docs``) call for;
        the studies recomputed."""
        rows = list(rows)
        if rows:
            self.last_change_at = time.time()
        studies: set[str] = set()
        patients: set[str] = set()
        foreign: list[str] = []
        for row in rows:
            doc_id = str(row.get("id", ""))
            revs = [c["rev"] for c in row.get("changes", [])]
            conflicted = len(revs) > 1
            if doc_id.startswith("i:"):
                if conflicted:
                    await self._resolve(doc_id, studies, patients)
                elif not self.docs.wrote(doc_id, revs[0] if revs else ""):
                    foreign.append(doc_id)
            elif conflicted and doc_id.startswith(("s:", "se:", "p:")):
                await self._resolve(doc_id, studies, patients)
        if foreign:
            arrived = {doc["study"] for doc in (await self.docs.get_docs(foreign)).values()
                       if doc.get("study") and doc.get("site") != self.docs.site}
            # A study this site has no document of yet is new here: its
            # documents, computed where it was written, follow its instances
            # (they were written after them). Recomputing it now would only
            # create a second version of them, a conflict to resolve later.
            known = await self.docs.revisions("s:" + study for study in arrived - studies)
            studies |= {study for study in arrived if "s:" + study in known}
        if studies:
            await self.aggregates.refresh(studies, LevelHints(ensure_keys=True))
            self.repaired_studies += len(studies)
        if patients:
            await self.aggregates.patients.refresh(patients, ensure=True)
        return studies

    async def _resolve(self, doc_id: str, studies: set[str], patients: set[str]) -> None:
        """Keep the winning revision of ``doc_id``, delete the losing ones
        and the keys only they had; note the studies/patients to recompute."""
        winner = await self.docs.with_conflicts(doc_id)
        if winner is None:
            return
        _note(winner, studies, patients)
        keep = {d["_id"] for d in _keys_of(winner)}
        for rev in winner.get("_conflicts") or []:
            loser = await self.docs.revision(doc_id, rev)
            if loser is None:
                continue
            _note(loser, studies, patients)
            stale = [d["_id"] for d in _keys_of(loser) if d["_id"] not in keep]
            if stale:
                await self.docs.delete_existing(stale)
            try:
                await self.docs.client.request("DELETE", doc_path(doc_id), params={"rev": rev})
            except (Missing, CouchError):
                pass  # already resolved by another frontend or site
            self.resolved_conflicts += 1
            log.info("resolved a replication conflict on a {kind} document", kind=doc_id.split(":", 1)[0])

    async def _save(self, force: bool = False, caught_up: bool = False) -> None:
        """Write the position: at most every CHECKPOINT_EVERY seconds while
        changes stream in, within CAUGHT_UP_SAVE once the feed is caught up."""
        now = self.reactor.seconds()
        every = CAUGHT_UP_SAVE if caught_up else CHECKPOINT_EVERY
        if self.since == self._saved or (not force and now - self._checkpoint_at < every):
            return
        body: dict[str, Any] = {"seq": self.since, "at": time.time(), "frontend": self.docs.frontend}
        if self._checkpoint_rev:
            body["_rev"] = self._checkpoint_rev
        try:
            result = await self.docs.put(CHECKPOINT_DOC, body)
            self._checkpoint_rev = result.get("rev")
            self._saved = self.since
        except CouchError:  # another frontend wrote it: take its revision, write next time
            current = await self.docs.get(CHECKPOINT_DOC)
            self._checkpoint_rev = current["_rev"] if current else None
        self._checkpoint_at = now

    def status(self) -> dict[str, Any]:
        return {"since": self.since, "repaired_studies": self.repaired_studies,
                "resolved_conflicts": self.resolved_conflicts, "last_change_at": self.last_change_at}


def _keys_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The QIDO key documents a revision of an instance or level document implies."""
    if doc.get("_deleted"):
        return []
    if doc["_id"].startswith("i:"):
        if doc.get("state") == "stored" and doc.get("att") and doc.get("sop") and doc.get("study"):
            return couchsearch.instance_key_docs(doc)
        return []
    if doc.get("doctype") in ("study", "series", "patient"):
        return couchsearch.level_key_docs(doc)
    return []


def _note(doc: dict[str, Any], studies: set[str], patients: set[str]) -> None:
    """The study (and patient) whose documents depend on ``doc``."""
    if doc.get("doctype") == "patient" and doc.get("pk"):
        patients.add(doc["pk"])
    elif doc.get("study"):
        studies.add(doc["study"])
        if doc.get("doctype") == "study":
            patients.add(patient_key(doc.get("attrs") or {}))


def _without_credentials(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//", url)


def _endpoint(value: Any) -> str:
    """A replication's source or target: a URL, or ``{"url": ...}`` (CouchDB 3)."""
    url = value.get("url", "") if isinstance(value, dict) else str(value or "")
    return _without_credentials(url)


async def replications(client: CouchClient) -> list[dict[str, Any]]:
    """The replications of ``client``'s database the server knows about:
    ``_replicator`` documents naming it as source or target, with their
    state (``_replication_state`` on the document; CouchDB 3:
    ``/_scheduler/docs``) and, where the server reports it, progress from
    ``/_active_tasks`` (``changes_pending``, the source sequence reached).
    Servers that allow none of this to the user answer an empty list."""
    try:
        rows = (await client.request("GET", "_replicator/_all_docs", params={"include_docs": "true"},
                                     root=True)).get("rows", [])
    except CouchError:
        return []
    try:
        tasks = await client.request("GET", "_active_tasks", root=True)
    except CouchError:
        tasks = []
    by_doc = {t.get("doc_id"): t for t in tasks if isinstance(t, dict) and t.get("type") == "replication"}
    out = []
    for row in rows:
        doc = row.get("doc") or {}
        if row["id"].startswith("_design/"):
            continue
        source, target = _endpoint(doc.get("source")), _endpoint(doc.get("target"))
        if client.database not in (source.rstrip("/").rsplit("/", 1)[-1], target.rstrip("/").rsplit("/", 1)[-1]):
            continue
        entry: dict[str, Any] = {"id": row["id"], "source": source, "target": target,
                                 "continuous": bool(doc.get("continuous")), "state": doc.get("_replication_state")}
        try:
            scheduler = await client.request("GET", f"_scheduler/docs/_replicator/{doc_path(row['id'])}", root=True)
            entry["state"] = scheduler.get("state", entry["state"])
            entry["info"] = scheduler.get("info")
        except CouchError:
            pass  # not CouchDB 3
        task = by_doc.get(row["id"])
        if task:
            entry.update({k: task.get(k) for k in ("changes_pending", "source_seq", "checkpointed_source_seq",
                                                   "docs_written", "updated_on")})
        out.append(entry)
    return out
