"""The CouchDB store's database, indexes and schema version, and the upgrades
from older schema versions.

The version lives in ``_local/dicomweb-schema`` (local documents are not
replicated: each database records what its own documents hold). Opening a
database ensures every index of :data:`~dicomweb.store.couchdocs.INDEXES`
(creating one that exists is a no-op, so a deleted index comes back), runs
the upgrades from the recorded version, and records :data:`SCHEMA_VERSION`.

Versions:

1. instance, study, series and journal documents.
2. order keys ``o`` on level documents, QIDO key documents (``couchsearch``),
   the search indexes.
3. study documents without the version 1 sort keys (``pid``, and the float
   ``od``/``ot`` of StudyDate/StudyTime) and without the two indexes on them
   (``studies-by-date``, ``studies-by-patient``): the search orders studies
   by ``o`` since version 2, and nothing else read them.
4. the patient level: study documents name their patient (``pk``) and when
   they last received an instance (``at``); patient documents ``p:<key>``
   with their QIDO key documents (``couchpatients``) and two indexes
   (``studies-by-patient-key``, ``patients-by-order``).
5. the change feed (:mod:`couchchanges`): event documents ``e:`` and feed
   entries ``c:``; instance documents name their latest event (``ev``). A
   database upgraded from an older version starts its feed with one Create
   per stored instance (ids from :func:`couchchanges.token_of`).

Only this module knows what older versions stored.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

from twisted.internet.task import deferLater
from twisted.logger import Logger

from . import couchchanges, couchsearch
from .changes import CREATE
from .common import ATTEMPTS
from .couchaggregates import Aggregates, LevelHints
from .couchdocs import CHUNK, INDEXES, STORE_DDOC, CouchDocs
from .couchhttp import Conflict, CouchError

log = Logger()

SCHEMA_VERSION = 5
SCHEMA_DOC = "_local/dicomweb-schema"
SITE_DOC = "_local/dicomweb-site"
#: Indexes of version 1 and 2, removed by the upgrade to 3 (in STORE_DDOC).
OBSOLETE_INDEXES = ("studies-by-date", "studies-by-patient")
#: Fields of version 1 and 2 study documents, removed by the upgrade to 3.
OBSOLETE_STUDY_FIELDS = ("od", "ot", "pid")


class Schema:
    """Creates, checks and upgrades one database (see the module docstring)."""

    def __init__(self, docs: CouchDocs, aggregates: Aggregates) -> None:
        self.docs = docs
        self.client = docs.client
        self.aggregates = aggregates
        #: The schema version the database had when it was opened (0: new).
        self.found_version: int | None = None

    async def open(self) -> None:
        """Create the database if needed, ensure the indexes, upgrade.

        Any number of frontends may run this at once on a new or old
        database: every step is idempotent, and a 409 on the schema or a
        design document means another frontend got there first, so the
        whole check is run again on what it wrote (a few times at most).

        Raises RuntimeError for what a retry cannot fix (credentials refused,
        a database of a newer schema), StoreUnavailable while CouchDB does
        not answer."""
        try:
            await self.client.request("GET", root=True)
        except CouchError as exc:
            if exc.status in (401, 403):
                raise RuntimeError("CouchDB refused the credentials (check the user and password)") from None
            raise
        try:
            await self.client.request("PUT")
            log.info("created CouchDB database {url}", url=self.client.safe_url)
        except CouchError as exc:
            if exc.status != 412:  # file_exists: created by us earlier or by another frontend
                if exc.status in (401, 403):
                    raise RuntimeError("CouchDB refused to create the database (needs an admin)") from None
                raise
        for attempt in range(ATTEMPTS):
            try:
                await self._check_and_upgrade()
                return
            except Conflict:
                log.info("another frontend is setting up {url} at the same time; checking again",
                         url=self.client.safe_url)
                await deferLater(self.docs.client.reactor, random.uniform(0.05, 0.1 * (attempt + 1)))
        raise RuntimeError("could not set up the CouchDB database (conflicting writers kept winning)")

    async def _check_and_upgrade(self) -> None:
        """One pass of :meth:`open` after the database exists; Conflict
        when another frontend wrote the schema or a design document meanwhile."""
        schema = await self.docs.get(SCHEMA_DOC)
        version = int(schema.get("version", 0)) if schema else 0
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"the CouchDB database has schema {version}, newer than this server ({SCHEMA_VERSION})")
        if self.found_version is None:
            self.found_version = version
        for name, index in INDEXES.items():
            await self._ensure_index(name, index.fields, index.ddoc)
        if 0 < version < 2:
            await self._upgrade_1_to_2()
        if 0 < version < 3:
            await self._upgrade_2_to_3()
        if 1 < version < 4:  # the upgrade to 2 already wrote them
            await self._upgrade_3_to_4()
        if 0 < version < 5:
            await self._upgrade_4_to_5()
        if version < SCHEMA_VERSION:
            body: dict[str, Any] = {"version": SCHEMA_VERSION, "indexes": sorted(INDEXES), "upgraded_at": time.time()}
            if schema:
                body["_rev"] = schema["_rev"]
            await self.docs.put(SCHEMA_DOC, body)  # Conflict: another frontend recorded it first
            log.info("CouchDB schema upgraded from {old} to {new}", old=version, new=SCHEMA_VERSION)

    async def site(self) -> str:
        """This database's site id (``_local/dicomweb-site``, created by the
        first frontend; local documents are not replicated, so every
        replica of the database is a site of its own)."""
        for _ in range(ATTEMPTS):
            doc = await self.docs.get(SITE_DOC)
            if doc is not None:
                return str(doc["site"])
            try:
                await self.docs.put(SITE_DOC, {"site": uuid.uuid4().hex[:16], "created_at": time.time()})
            except Conflict:
                pass  # another frontend created it: read that one
        raise RuntimeError("could not read the site id of the CouchDB database")

    async def _ensure_index(self, name: str, fields: tuple[str, ...], ddoc: str) -> None:
        """Create a Mango index (a no-op when it exists). Two frontends
        creating indexes of one design document at once make the server
        answer 409 (or, pouchdb-server, 500 with a conflict) to one of them:
        raised as :class:`Conflict` so :meth:`open` checks again."""
        body = {"index": {"fields": list(fields)}, "ddoc": ddoc, "name": name, "type": "json"}
        try:
            await self.client.post("_index", body)
        except Conflict:
            raise
        except CouchError as exc:
            if "conflict" in f"{exc.error} {exc.reason}".lower():
                raise Conflict(exc.status, exc.error, exc.reason) from None
            raise

    async def _upgrade_1_to_2(self) -> None:
        """Order keys and QIDO key documents for what a version 1 server stored."""
        log.info("CouchDB schema 1 -> 2: writing QIDO keys of stored instances")
        count = await self._upgrade_instances()
        studies = [doc_id[2:] for doc_id in await self.docs.ids_with_prefix("s:")]
        await self.aggregates.refresh(studies, LevelHints(ensure_keys=True))
        log.info("CouchDB schema 1 -> 2: {n} instances and {m} studies indexed", n=count, m=len(studies))

    async def _upgrade_2_to_3(self) -> None:
        """Drop the version 1 study sort keys and their indexes."""
        log.info("CouchDB schema 2 -> 3: removing the unused study sort keys and their indexes")
        await self._drop_indexes(STORE_DDOC, OBSOLETE_INDEXES)
        ids = await self.docs.ids_with_prefix("s:")
        rewritten = 0
        for start in range(0, len(ids), CHUNK):
            docs = await self.docs.get_docs(ids[start:start + CHUNK])
            rewrite = [{k: v for k, v in d.items() if k not in OBSOLETE_STUDY_FIELDS} for d in docs.values()
                       if any(f in d for f in OBSOLETE_STUDY_FIELDS)]
            # A conflict: the study was rewritten meanwhile, without those fields.
            rows = await self.docs.bulk(rewrite)
            rewritten += sum(1 for r in rows if not r.get("error"))
        log.info("CouchDB schema 2 -> 3: {n} study documents rewritten", n=rewritten)

    async def _upgrade_3_to_4(self) -> None:
        """Patient keys on study documents, and the patient documents. A study
        stored before has no ``at``: the newest ``stored_at`` of its instances."""
        log.info("CouchDB schema 3 -> 4: writing the patient documents")
        studies = [doc_id[2:] for doc_id in await self.docs.ids_with_prefix("s:")]
        await self.aggregates.refresh(studies, LevelHints(ensure_keys=True))
        log.info("CouchDB schema 3 -> 4: patients of {m} studies indexed", m=len(studies))

    async def _upgrade_4_to_5(self) -> None:
        """A Create event for every stored instance, in (study, SOP UID) order.
        Creating an event twice changes nothing, so an interrupted upgrade is redone whole."""
        log.info("CouchDB schema 4 -> 5: writing change-feed events of the stored instances")
        done = 0
        while True:
            page = await self.docs.find("instances-by-study", {
                "doctype": "instance", "state": "stored", "study": {"$gt": None}, "sop": {"$gt": None}},
                fields=["_id", "_rev", "study", "series", "sop", "ev"], limit=CHUNK, skip=done)
            await couchchanges.write_events(self.docs, [
                couchchanges.event_doc(CREATE, d, couchchanges.token_of(d)) for d in page])
            done += len(page)
            if len(page) < CHUNK:
                break
        log.info("CouchDB schema 4 -> 5: {n} events written", n=done)

    async def _drop_indexes(self, ddoc: str, names: tuple[str, ...]) -> None:
        """Remove Mango indexes by rewriting their design document without
        them (what CouchDB's ``DELETE /db/_index/...`` does; pouchdb-server
        4.2 answers that request with an error). The other indexes of the
        design document stay usable; CouchDB rebuilds them once."""
        path = "_design/" + ddoc
        for _ in range(ATTEMPTS):
            design = await self.docs.get(path)
            views = dict((design or {}).get("views") or {})
            if design is None or not any(name in views for name in names):
                return
            design["views"] = {name: view for name, view in views.items() if name not in names}
            try:
                await self.docs.put(path, design)
                return
            except Conflict:
                continue  # another frontend upgrading at the same moment

    async def _upgrade_instances(self) -> int:
        """Give every stored instance document its order key ``o`` and write its keys."""
        done, skip = 0, 0
        while True:
            page = await self.docs.find("instances-by-study", {"doctype": "instance", "state": "stored",
                                                               "study": {"$gt": None}, "sop": {"$gt": None}},
                                        fields=["_id"], limit=CHUNK, skip=skip)
            skip += len(page)
            docs = await self.docs.get_docs(d["_id"] for d in page)
            rewrite = []
            for doc in docs.values():
                order = couchsearch.instance_order(doc.get("instance_attrs") or {}, doc["sop"])
                if doc.get("o") != order:
                    doc["o"] = order
                    rewrite.append(doc)
            await self.docs.bulk(rewrite)  # conflicts: rewritten by a newer server
            await couchsearch.sync_keys(self.docs, [([], couchsearch.instance_key_docs(d)) for d in docs.values()
                                                    if d.get("state") == "stored"])
            done += len(docs)
            if len(page) < CHUNK:
                return done
