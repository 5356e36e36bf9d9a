"""QIDO key documents that no current document stands behind (CouchDB store).

A key document (``q:``, see :mod:`.couchsearch`) belongs to one generation
of its owner: an instance document's attachment, a study, series or patient
document's level attributes. The writer that supersedes a generation deletes
its keys, and the journal sweep redoes what a batch cut short left undone;
what is still left after a crash in between (keys of an instance document
that was never written, or of a generation whose deletion did not happen)
is found here by comparing every key document with the keys its owner has
now. Such keys never make a search return a wrong answer (every candidate is
checked against the level documents), they only cost space and candidate
reads. ``dicomweb-admin orphans`` lists or removes them.

Two scans a grace period apart: a key written by a STOW in flight (before
its instance document) is an orphan for an instant only, and is left alone.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import deferLater

from ..twistedtypes import IReactor
from .common import PAGE
from .couchdocs import CouchDocs, instance_id
from .couchsearch import instance_key_docs, level_key_docs

#: Owner document id prefix of each key level.
_OWNER = {"instance": "i:", "study": "s:", "series": "se:", "patient": "p:"}


def _owner_id(key: dict[str, Any]) -> str:
    level, owner = key.get("l", ""), str(key.get("u", ""))
    return instance_id(owner) if level == "instance" else _OWNER.get(level, "?:") + owner


def current_key_ids(doc: dict[str, Any]) -> set[str]:
    """Ids of the key documents ``doc`` (an owner) has in its present generation."""
    doctype = doc.get("doctype")
    if doctype in ("study", "series", "patient"):
        return {k["_id"] for k in level_key_docs(doc)}
    if doc.get("state") == "stored" and doc.get("att") and doc.get("sop"):
        return {k["_id"] for k in instance_key_docs(doc)}
    return set()  # a deletion stub, a rejected or never-finished instance: no keys


async def orphan_keys(docs: CouchDocs) -> dict[str, str]:
    """``{id: rev}`` of every key document its owner does not have now."""
    out: dict[str, str] = {}
    params: dict[str, Any] = {"startkey": json.dumps("q:"), "endkey": json.dumps("q:\ufff0"), "limit": PAGE,
                              "include_docs": "true"}
    while True:
        rows = (await docs.client.request("GET", "_all_docs", params=params)).get("rows", [])
        keys = [row["doc"] for row in rows if row.get("doc")]
        owners = await docs.get_docs({_owner_id(key) for key in keys})
        current: set[str] = set()
        for owner in owners.values():
            current |= current_key_ids(owner)
        out.update({key["_id"]: key["_rev"] for key in keys if key["_id"] not in current})
        if len(rows) < PAGE:
            return out
        params = {**params, "startkey": json.dumps(rows[-1]["id"]), "skip": 1}


async def collect(docs: CouchDocs, reactor: IReactor, delete: bool, grace: float) -> list[str]:
    """The orphaned key ids (deleted with ``delete``): found by two scans
    ``grace`` seconds apart (what a STOW in flight owns is gone by then)."""
    first = await orphan_keys(docs)
    if not first:
        return []
    if grace > 0:
        await deferLater(reactor, grace)
    second = await orphan_keys(docs)
    found = {doc_id: rev for doc_id, rev in second.items() if doc_id in first}
    if delete:
        gone = [{"_id": doc_id, "_rev": rev, "_deleted": True} for doc_id, rev in sorted(found.items())]
        for start in range(0, len(gone), PAGE):
            await docs.bulk(gone[start:start + PAGE])
    return sorted(found)


__all__ = ["collect", "current_key_ids", "orphan_keys"]
