"""Deleting and rejecting instances in the CouchDB store.

Instance documents ``i:<sop>`` change state; nothing else needs a new document:

- **reject**: ``state`` becomes ``"rejected"`` (with ``rejection``: code,
  scheme, time). Every query of the store selects ``state: "stored"``, so a
  rejected instance leaves search and retrieval at once; its attachment
  stays for a restore (storing it again) until it is deleted or purged.
- **delete**: each instance document is replaced by a stub ``{"doctype":
  "instance", "state": "deleted"}``: no attachment, no metadata (only the
  UIDs and token of its change-feed event, see :mod:`couchchanges`). The bytes go with the old revision (CouchDB
  returns the space at compaction). A stub rather than a CouchDB deletion
  (``_deleted``): pouchdb-server refuses an attachment PUT on a deleted
  document (404, even with its revision), so the same SOP Instance UID could
  never be stored again there; on a stub, STOW's ordinary path (attachment
  on the current revision) just works. A stub is as small as a tombstone.

Then the study and series aggregate documents are recomputed exactly as
after a STOW (:class:`~dicomweb.store.couchaggregates.Aggregates`), and the
QIDO key documents kept per instance beside it are removed
(:func:`~dicomweb.store.couchsearch.forget_instances`).

Crash repair: a journal document (``doctype: "journal"``) naming the study
and the removed SOP Instance UIDs is written before the first change and
deleted after the last; the sweep of any frontend redoes the aggregates and
the hook for journals left behind. Its ``docs`` list is empty on purpose:
the sweep deletes the never-stored documents a STOW journal lists, and must
never touch a rejected one.

Concurrency: every write carries the revision read just before; on 409 the
document is read again and the change reapplied if it still applies, so two
frontends deleting or rejecting the same instances both succeed, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from . import couchchanges, couchsearch
from .base import not_found
from .changes import DELETE
from .common import ATTEMPTS, PAGE
from .couchaggregates import Aggregates
from .couchdocs import CouchDocs, instance_id
from .couchhttp import CouchError

Change = Callable[[dict[str, Any]], dict[str, Any]]


class Removal:
    """Delete, reject and purge instances (see the module docstring)."""

    def __init__(self, docs: CouchDocs, aggregates: Aggregates) -> None:
        self.docs = docs
        self.aggregates = aggregates

    async def delete(self, study: str, series: str | None, sop: str | None) -> int:
        """Replace the instance documents (stored or rejected) by stubs without bytes."""
        return await self._remove(study, series, sop, frozenset({"stored", "rejected"}), deleted(self.docs.site))

    async def reject(self, study: str, series: str | None, sop: str | None, code: str, scheme: str) -> int:
        """Mark the stored instances ``rejected`` (bytes kept until deleted or purged)."""
        return await self._remove(study, series, sop, frozenset({"stored"}), rejected(code, scheme, self.docs.site))

    async def purge_rejected(self, older_than: float) -> int:
        """Delete the instance documents rejected more than ``older_than`` s ago.

        Rejected instances count in no aggregate and no search key, so nothing
        else changes. Pages on the study index with ``study > null``: the index
        starts with (doctype, state), so the scan covers rejected documents only.
        """
        cutoff = time.time() - older_than
        purged = 0
        while True:
            page = await self.docs.find("instances-by-study", {
                "doctype": "instance", "state": "rejected", "study": {"$gt": None}, "sop": {"$gt": None},
                "rejected_at": {"$lt": cutoff}}, ["_id", "_rev"], limit=PAGE)
            if not page:
                return purged
            result = await self.docs.bulk([deleted(self.docs.site)(d) for d in page])
            changed = sum(1 for row in result if not row.get("error"))
            purged += changed
            if not changed:
                return purged  # only conflicts: leave the rest to the next run

    async def _remove(self, study: str, series: str | None, sop: str | None, states: frozenset[str],
                      change: Change) -> int:
        """Find, journal, change, recompute aggregates, remove keys, unjournal."""
        ids = await self._instance_ids(study, series, sop, sorted(states))
        if not ids:
            raise not_found(series, sop)
        journal = await self.docs.open_journal([study], removed=[i[2:] for i in ids])
        pairs = await self._apply(study, ids, states, change)
        done = [before for before, _after in pairs]
        # A Delete event per instance that was visible (a rejected one had its
        # Delete when it was rejected), before the request is answered.
        await couchchanges.write_events(self.docs, [
            couchchanges.event_doc(DELETE, before, after["ev"]) for before, after in pairs
            if before.get("state") == "stored"])
        await self.aggregates.refresh({study})
        await couchsearch.forget_instances(self.docs, done)
        await self.docs.close_journal(journal)
        return len(done)

    async def _instance_ids(self, study: str, series: str | None, sop: str | None,
                            states: Sequence[str]) -> list[str]:
        """Document ids of the target's instances in any of ``states``."""
        if sop is not None:
            doc = await self.docs.get(instance_id(sop))
            if doc and doc.get("state") in states and doc.get("study") == study and (
                    series is None or doc.get("series") == series):
                return [doc["_id"]]
            return []
        ids: list[str] = []
        for state in states:
            ids.extend(d["_id"] for d in await self.docs.instances(study, series, state, ["_id"]))
        return ids

    async def _apply(self, study: str, ids: list[str], states: frozenset[str],
                     change: Change) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Apply ``change`` to each document still in ``states``; retry conflicts
        on fresh revisions. Returns the documents changed by this call, as they
        were before and as written."""
        done: list[tuple[dict[str, Any], dict[str, Any]]] = []
        pending = ids
        for _ in range(ATTEMPTS):
            if not pending:
                break
            found = await self.docs.get_docs(pending)
            docs = [d for d in found.values() if d.get("state") in states and d.get("study") == study]
            if not docs:
                break
            changed = {d["_id"]: change(d) for d in docs}
            result = await self.docs.bulk(list(changed.values()))
            by_id = {d["_id"]: d for d in docs}
            pending = []
            for row in result:
                if row.get("error") == "conflict":
                    pending.append(row["id"])
                elif row.get("error"):
                    raise CouchError(500, str(row.get("error")), str(row.get("reason", "")))
                else:
                    done.append((by_id[row["id"]], changed[row["id"]]))
        return done


def deleted(site: str) -> Change:
    """The stub that replaces a deleted instance (see the module docstring).

    The stub names the site that deleted it and its study, so that another
    site the deletion replicates to recomputes that study (``couchrepair``);
    the stub of a visible instance also names its change-feed event (``ev``)
    and the UIDs that event needs, so the crash-repair sweep can write it."""
    def change(doc: dict[str, Any]) -> dict[str, Any]:
        stub = {"_id": doc["_id"], "_rev": doc["_rev"], "doctype": "instance", "state": "deleted",
                "deleted_at": time.time(), "site": site}
        if doc.get("state") == "stored":
            stub.update(ev=couchchanges.new_token(), study=doc["study"], series=doc["series"], sop=doc["sop"])
        elif doc.get("study"):
            stub["study"] = doc["study"]
        return stub

    return change


def rejected(code: str, scheme: str, site: str) -> Change:
    def change(doc: dict[str, Any]) -> dict[str, Any]:
        # The whole document (attachment stubs included) is written back:
        # a document written without its stubs would lose the bytes.
        return {**doc, "state": "rejected", "rejection": {"code": code, "scheme": scheme},
                "rejected_at": time.time(), "ev": couchchanges.new_token(), "site": site}

    return change
