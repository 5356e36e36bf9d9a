"""Document access for the CouchDB store: reads by id, Mango ``_find`` on
named indexes, keyset paging of instance documents, bulk writes, journals.

Every other part of the CouchDB store (search, removal, aggregates, the
schema) reads and writes documents through :class:`CouchDocs`; only the
attachment transfers of :class:`~dicomweb.store.couch.CouchStore` use the
HTTP client directly.

Selectors are data (dicts) built from validated values, never text.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from .common import PAGE
from .couchhttp import CouchClient, CouchError, doc_path

log = Logger()

#: Design document of the store's own indexes.
STORE_DDOC = "dicomweb-v1"
#: Design document of the search indexes (kept apart from the store's own
#: so that adding them did not rebuild the older indexes).
SEARCH_DDOC = "dicomweb-search-v2"
#: Design document of the patient level's indexes (schema 4), apart so that
#: adding them rebuilt no older index.
PATIENT_DDOC = "dicomweb-patients-v4"
#: Ids per ``_all_docs`` request.
CHUNK = 500
#: Instance revisions this frontend wrote, remembered so that the change
#: follower does not read its own writes back (the oldest are forgotten).
OWN_REVISIONS = 50_000


@dataclass(frozen=True)
class Index:
    """A Mango JSON index: its design document and fields, in sort order."""

    ddoc: str
    fields: tuple[str, ...]


#: Every index the store queries, by name. Every query names its index
#: (``use_index``) and puts every index field in its selector and sort
#: (see :meth:`CouchDocs.find`).
INDEXES: dict[str, Index] = {
    "instances-by-study": Index(STORE_DDOC, ("doctype", "state", "study", "sop")),
    "instances-by-series": Index(STORE_DDOC, ("doctype", "state", "series", "sop")),
    "series-by-study": Index(STORE_DDOC, ("doctype", "study", "series")),
    "journal": Index(STORE_DDOC, ("doctype", "at")),
    "qkeys": Index(SEARCH_DDOC, ("doctype", "p", "k", "u")),
    "studies-by-order": Index(SEARCH_DDOC, ("doctype", "o")),
    "series-by-study-order": Index(SEARCH_DDOC, ("doctype", "study", "o")),
    "instances-by-series-order": Index(SEARCH_DDOC, ("doctype", "state", "series", "o")),
    "studies-by-patient-key": Index(PATIENT_DDOC, ("doctype", "pk", "study")),
    "patients-by-order": Index(PATIENT_DDOC, ("doctype", "o")),
}


def instance_id(sop: str) -> str:
    """The id of an instance document."""
    return "i:" + sop


class CouchDocs:
    """Documents of one CouchDB database (see the module docstring)."""

    def __init__(self, client: CouchClient) -> None:
        self.client = client
        #: The site: one database and its frontends, an id kept in the
        #: database's ``_local/dicomweb-site`` (local documents are not
        #: replicated, so each replica is a site of its own); set on open.
        #: Instance documents and journals name the site that wrote them.
        self.site = ""
        #: This frontend process (journals name it; see ``CouchStore.sweep``).
        self.frontend = uuid.uuid4().hex[:16]
        self._own: OrderedDict[str, str] = OrderedDict()

    # -- own writes -------------------------------------------------------------

    def remember(self, doc_id: str, rev: str) -> None:
        """Note an instance revision this frontend wrote (see :meth:`wrote`)."""
        if doc_id.startswith("i:"):
            self._own[doc_id] = rev
            self._own.move_to_end(doc_id)
            while len(self._own) > OWN_REVISIONS:
                self._own.popitem(last=False)

    def wrote(self, doc_id: str, rev: str) -> bool:
        """Whether ``rev`` of ``doc_id`` is the last one this frontend wrote."""
        return self._own.get(doc_id) == rev

    # -- the database ---------------------------------------------------------------

    async def update_seq(self) -> Any:
        """The database's current sequence (``GET /db``)."""
        info = await self.client.request("GET")
        return info.get("update_seq")

    # -- conflicts ----------------------------------------------------------------

    async def with_conflicts(self, doc_id: str) -> dict[str, Any] | None:
        """The winning revision of a document, with ``_conflicts`` (the
        losing leaf revisions) when there are any."""
        doc: dict[str, Any] | None = await self.client.get_or_none(doc_path(doc_id), params={"conflicts": "true"})
        return doc

    async def revision(self, doc_id: str, rev: str) -> dict[str, Any] | None:
        """One revision of a document (a losing one of a conflict, say)."""
        doc: dict[str, Any] | None = await self.client.get_or_none(doc_path(doc_id), params={"rev": rev})
        return doc

    # -- reads ------------------------------------------------------------------

    async def get(self, doc_id: str) -> dict[str, Any] | None:
        """One document by id; None when there is none (or it is deleted)."""
        doc: dict[str, Any] | None = await self.client.get_or_none(doc_path(doc_id))
        return doc

    async def get_docs(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Existing documents by id (``_all_docs`` with ``keys``), in chunks."""
        ids = sorted(set(ids))
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), CHUNK):
            result = await self.client.post("_all_docs", {"keys": ids[start:start + CHUNK]},
                                            params={"include_docs": "true"})
            for row in result.get("rows", []):
                doc = row.get("doc")
                if doc and not (row.get("value") or {}).get("deleted"):
                    out[row["key"]] = doc
        return out

    async def revisions(self, ids: Iterable[str]) -> dict[str, str]:
        """Current revisions of the existing documents among ``ids``."""
        ids = sorted(set(ids))
        out: dict[str, str] = {}
        for start in range(0, len(ids), CHUNK):
            result = await self.client.post("_all_docs", {"keys": ids[start:start + CHUNK]})
            for row in result.get("rows", []):
                value = row.get("value")
                if value and not value.get("deleted"):
                    out[row["id"]] = value["rev"]
        return out

    async def find(self, index: str, selector: dict[str, Any], fields: Sequence[str] | None = None,
                   limit: int = PAGE, skip: int = 0) -> list[dict[str, Any]]:
        """One Mango ``_find`` on a named index, sorted by the index fields.

        Every index field must be in the selector: CouchDB needs the sort
        fields there, and pouchdb-server ignores other fields otherwise.
        """
        spec = INDEXES[index]
        missing = [f for f in spec.fields if f not in selector]
        assert not missing, f"selector lacks index fields {missing}"
        body: dict[str, Any] = {
            "selector": selector,
            "sort": [{f: "asc"} for f in spec.fields],
            "use_index": [spec.ddoc, index],
            "limit": limit,
        }
        if skip:
            body["skip"] = skip
        if fields is not None:
            body["fields"] = list(fields)
        result = await self.client.post("_find", body)
        if result.get("warning") and "index" in str(result["warning"]).lower():
            log.warn("CouchDB _find on {index} did not use the index: {warning}", index=index, warning=result["warning"])
        # pouchdb-server answers null for a document deleted while the
        # query ran: it is gone, so it is left out.
        docs: list[dict[str, Any]] = [d for d in result.get("docs", []) if d]
        return docs

    async def instances(self, study: str | None, series: str | None, state: str,
                        fields: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every instance document of a study or series in ``state``, paged by
        SOP UID (keyset pagination: no skip, exact under concurrent writes).
        With a series, ``study`` (if given) must match too."""
        if fields is not None:
            fields = sorted({*fields, "sop"})
        out: list[dict[str, Any]] = []
        last = ""
        while True:
            selector: dict[str, Any] = {"doctype": "instance", "state": state, "sop": {"$gt": last}}
            if series is not None:
                selector["series"] = series
                if study is not None:
                    selector["study"] = study
                index = "instances-by-series"
            else:
                selector["study"] = study
                index = "instances-by-study"
            page = await self.find(index, selector, fields)
            out.extend(page)
            if len(page) < PAGE:
                return out
            last = page[-1]["sop"]

    async def ids_with_prefix(self, prefix: str) -> list[str]:
        """Ids of the documents whose id starts with ``prefix`` (``_all_docs``
        on a key range, keyset paged)."""
        out: list[str] = []
        params: dict[str, Any] = {"startkey": json.dumps(prefix), "endkey": json.dumps(prefix + "\ufff0"),
                                  "limit": PAGE}
        while True:
            rows = (await self.client.request("GET", "_all_docs", params=params)).get("rows", [])
            out.extend(r["id"] for r in rows)
            if len(rows) < PAGE:
                return out
            params = {**params, "startkey": json.dumps(rows[-1]["id"]), "skip": 1}

    # -- writes -----------------------------------------------------------------

    async def bulk(self, docs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """``_bulk_docs``: one result row per document (``error`` on a conflict)."""
        if not docs:
            return []
        rows: list[dict[str, Any]] = await self.client.post("_bulk_docs", {"docs": list(docs)})
        for row in rows:
            if row.get("rev") and not row.get("error"):
                self.remember(row.get("id", ""), row.get("rev", ""))
        return rows

    async def create_new(self, docs: Sequence[dict[str, Any]]) -> None:
        """Create documents with deterministic ids; one that exists already
        (a conflict) has the same content and is left alone."""
        for start in range(0, len(docs), CHUNK):
            result = await self.bulk(docs[start:start + CHUNK])
            errors = [r for r in result if r.get("error") and r.get("error") != "conflict"]
            if errors:
                log.error("CouchDB refused documents: {error}", error=errors[0].get("error"))

    async def delete_existing(self, ids: Iterable[str]) -> None:
        """Delete those of ``ids`` that exist; one rewritten meanwhile (a
        conflict) is left alone."""
        revs = await self.revisions(ids)
        gone = [{"_id": doc_id, "_rev": rev, "_deleted": True} for doc_id, rev in sorted(revs.items())]
        for start in range(0, len(gone), CHUNK):
            await self.bulk(gone[start:start + CHUNK])

    async def put(self, doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Write one document (``_rev`` in ``doc`` for an update); raises Conflict."""
        result: dict[str, Any] = await self.client.put(doc_path(doc_id), doc)
        self.remember(doc_id, result.get("rev", ""))
        return result

    async def discard(self, doc_id: str, rev: str) -> None:
        """Delete a document, quietly: one already changed or gone is left to
        the journal sweep."""
        try:
            await self.client.request("DELETE", doc_path(doc_id), params={"rev": rev})
        except CouchError:
            pass

    # -- journals -----------------------------------------------------------------

    async def open_journal(self, studies: Iterable[str], docs: Iterable[str] = (),
                           removed: Iterable[str] = ()) -> tuple[str, str]:
        """Write a journal document (crash repair, see ``CouchStore.sweep``):
        the studies whose aggregates a change touches, the instance documents
        a STOW writes (``docs``) or the SOP Instance UIDs a removal takes away
        (``removed``). Returns (id, revision) for :meth:`close_journal`."""
        result = await self.client.post("", {"doctype": "journal", "at": time.time(), "studies": sorted(studies),
                                              "docs": list(docs), "removed": list(removed),
                                              "site": self.site, "fe": self.frontend})
        return result["id"], result["rev"]

    async def close_journal(self, journal: tuple[str, str]) -> None:
        await self.discard(*journal)

    async def journals(self) -> list[dict[str, Any]]:
        """Every journal document left (batches in flight or cut short)."""
        return await self.find("journal", {"doctype": "journal", "at": {"$gt": None}}, limit=100000)
