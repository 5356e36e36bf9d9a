"""The CouchDB store: the same contract as the embedded one, on CouchDB's HTTP API.

Documents (see README "Running on CouchDB")::

    i:<SOPInstanceUID>   one per instance: UIDs, level attributes, the DICOM
                         JSON metadata (as text), frame and bulk byte ranges,
                         transfer syntax, size, sha256, and the Part 10 bytes as
                         the attachment named by ``att`` ("p10-<random>").
                         Visible only when ``state == "stored"``.
    s:<StudyInstanceUID> one per study: study attributes (latest write wins),
                         and the aggregates NumberOfStudyRelatedSeries/-Instances,
                         ModalitiesInStudy, SOPClassesInStudy.
    se:<SeriesInstanceUID> one per series: series attributes and its count.
    j:<random>           a journal entry per STOW batch in flight (crash repair),
                         naming its site and frontend.
    q:<hash>             QIDO match keys, one per (level, owner, generation,
                         path, key): see :mod:`couchsearch`.
    _local/dicomweb-schema  the schema version (see :mod:`couchschema`); also
                         ``-site`` (this replica's id), ``-follower`` (the
                         repair follower's position), ``-frontend-<id>``
                         (heartbeats). Local documents are not replicated.

Write order for one instance (nothing acknowledged is lost, nothing half
stored is visible):

1. the attachment is uploaded as a stream under a new name, on the existing
   document's revision (or creating a document that has nothing but the
   attachment, which no query matches): a stored version stays whole and
   visible meanwhile;
2. one document write switches everything at once: metadata, ranges,
   ``att`` and ``state: "stored"``, keeping only the new attachment stub (the
   old bytes go with the old revision);
3. study and series aggregate documents are recomputed from the instance
   index (:class:`~dicomweb.store.couchaggregates.Aggregates`) with
   optimistic concurrency;
4. the STOW response is sent.

A crash between 2 and 3 leaves correct instances but stale aggregates; the
batch's journal document, written before 1 and deleted after 3, lets any
frontend of the site redo 3 (on start, and within about 30 s once the
frontend's heartbeat stops: see :meth:`CouchStore.sweep`).

Replication between sites brings documents no frontend of this site wrote;
the repair follower (:mod:`couchrepair`) recomputes what they affect and
resolves replication conflicts.

Collaborators, each with a public interface, composed here:
:class:`~dicomweb.store.couchdocs.CouchDocs` (document access, paging,
journals), :mod:`couchsearch` (QIDO), :class:`~dicomweb.store.couchremove.Removal`
(delete, reject, purge), :class:`~dicomweb.store.couchaggregates.Aggregates`
(study and series documents), :class:`~dicomweb.store.couchschema.Schema`
(database, indexes, upgrades). This class keeps the attachment transfers,
STOW's write order and the crash repair sweep.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from twisted.internet.defer import DeferredSemaphore
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ..dicom.analyze import PROCESSING_FAILURE, InstanceInfo
from ..dicom.dicomjson import first_text, int_value
from ..dicom.order import retrieval_key
from ..dicom.query import PATIENT, Query
from ..twistedtypes import IReactor
from . import couchchanges, couchpatients, couchrepair, couchsearch
from .base import InstanceRecord, NotFound, Spool, StoreItem, StoreOutcome, StoreUnavailable, not_found
from .changes import Change
from .common import ATTEMPTS, READ_ATTEMPTS, READ_BACKOFF, gather
from .couchaggregates import Aggregates, LevelHints
from .couchdocs import CouchDocs, instance_id
from .couchhttp import BodyStream, Conflict, CouchClient, CouchError, Missing, RangeProducer, doc_path
from .couchremove import Removal
from .couchrepair import CHECKPOINT_DOC, Follower
from .couchschema import SCHEMA_DOC, SCHEMA_VERSION, SITE_DOC, Schema

log = Logger()
T = TypeVar("T")

HEARTBEAT_DOC = "_local/dicomweb-frontend-"

JOURNAL_GRACE = 120.0  # seconds before another frontend may finish a batch's journal
#: Every frontend writes ``_local/dicomweb-frontend-<id>`` this often (seconds);
#: one not written for DEAD_AFTER seconds belongs to a frontend that died, and
#: the journals it left are finished at once instead of after JOURNAL_GRACE.
HEARTBEAT = 5.0
DEAD_AFTER = 20.0
#: Seconds between two journal sweeps, and the age after which a live
#: frontend's journal is repaired anyway (its own repair may have failed).
SWEEP_EVERY = 10.0
REPAIR_AFTER = 60.0


@dataclass
class _Digest:
    sha256: str
    md5: str  # CouchDB attachment digest: "md5-" + base64


def _digest(source: IO[bytes], offset: int, length: int) -> _Digest:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    try:
        fd: int | None = source.fileno()
    except (OSError, AttributeError, ValueError):
        fd = None
    done = 0
    while done < length:
        size = min(1 << 20, length - done)
        if fd is not None:
            data = os.pread(fd, size, offset + done)
        else:
            source.seek(offset + done)
            data = source.read(size)
        if not data:
            raise EOFError("the source ended before the instance did")
        sha.update(data)
        md5.update(data)
        done += len(data)
    return _Digest(sha.hexdigest(), "md5-" + base64.b64encode(md5.digest()).decode())


class CouchStore:
    """CouchDB (or any server speaking its HTTP API) through treq."""

    name = "couch"

    def __init__(self, url: str, database: str, reactor: IReactor, pool: ThreadPool, *, user: str | None = None,
                 password: str | None = None, spool_dir: str | None = None, concurrency: int = 16,
                 timeout: float = 30.0, retry_for: float = 5.0, ca_file: str | None = None,
                 maintenance: bool = True, start_wait: float = 60.0) -> None:
        """``maintenance``: this store runs the journal sweeps (at open and
        every SWEEP_EVERY seconds) and the change follower that repairs what
        other sites wrote. A server with several worker processes
        (:mod:`dicomweb.workers`) gives that job to its supervising process
        alone; its workers' stores pass False (they still send heartbeats,
        so their journals are left to them while they live)."""
        self.client = CouchClient(url, database, reactor, user=user, password=password, concurrency=concurrency,
                                  timeout=timeout, retry_for=retry_for, ca_file=ca_file)
        self.reactor = reactor
        self._pool = pool
        self.spool_dir = spool_dir
        self.start_wait = start_wait
        self._spool = Spool(spool_dir)
        self._uploads = DeferredSemaphore(max(2, concurrency // 2))
        self._sweeper: LoopingCall | None = None
        self._maintenance = maintenance
        self.docs = CouchDocs(self.client)
        self.aggregates = Aggregates(self.docs, reactor)
        self.removal = Removal(self.docs, self.aggregates)
        self.schema = Schema(self.docs, self.aggregates)
        self.feed = couchchanges.ChangeNumbering(self.docs, reactor)
        self.follower = Follower(self.docs, self.aggregates, reactor)
        self._heartbeat: LoopingCall | None = None
        self._heartbeat_rev: str | None = None

    # -- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        if self.spool_dir:
            os.makedirs(self.spool_dir, exist_ok=True)
        delay = 0.5
        deadline = self.reactor.seconds() + self.start_wait
        while True:
            try:
                await self.schema.open()
                break
            except StoreUnavailable:
                if self.reactor.seconds() + delay > deadline:
                    raise RuntimeError(f"CouchDB at {self.client.safe_url} did not answer within "
                                       f"{self.start_wait:g}s") from None
                log.warn("CouchDB at {url} is not reachable yet; retrying in {delay:.1f}s",
                         url=self.client.safe_url, delay=delay)
            await deferLater(self.reactor, delay)
            delay = min(delay * 2, 10)
        self.docs.site = await self.schema.site()
        await self._beat()
        self._heartbeat = LoopingCall(self._beat_quietly)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(HEARTBEAT, now=False)
        if self._maintenance:
            await self.sweep(grace=0.0, finish=False)
            self._sweeper = LoopingCall(self._sweep_quietly)
            self._sweeper.clock = self.reactor
            self._sweeper.start(SWEEP_EVERY, now=False)
        await self.feed.open()
        if self._maintenance:
            await self.follower.start(fresh_database=self.schema.found_version == 0)
        log.info("CouchDB store ready at {url} (schema {version}, site {site}, frontend {frontend})",
                 url=self.client.safe_url, version=SCHEMA_VERSION, site=self.docs.site, frontend=self.docs.frontend)

    async def close(self) -> None:
        for loop in (self._sweeper, self._heartbeat):
            if loop is not None and loop.running:
                loop.stop()
        if self._maintenance:
            await self.follower.stop()
        await self.feed.close()
        if self._heartbeat_rev:  # stopped: journals it left are finished by the others at once
            try:
                await self.client.request("DELETE", doc_path(HEARTBEAT_DOC + self.docs.frontend),
                                          params={"rev": self._heartbeat_rev}, retry=False, timeout=5)
            except (StoreUnavailable, CouchError):
                pass
        await self.client.close()

    async def _beat(self) -> None:
        """Say that this frontend is alive (see HEARTBEAT)."""
        body: dict[str, Any] = {"at": time.time(), "site": self.docs.site}
        if self._heartbeat_rev:
            body["_rev"] = self._heartbeat_rev
        path = HEARTBEAT_DOC + self.docs.frontend
        try:
            self._heartbeat_rev = (await self.docs.put(path, body)).get("rev")
        except Conflict:
            current = await self.docs.get(path)
            self._heartbeat_rev = current["_rev"] if current else None

    async def _beat_quietly(self) -> None:
        try:
            await self._beat()
        except (StoreUnavailable, CouchError) as exc:
            log.warn("heartbeat postponed: {error}", error=type(exc).__name__)

    async def ready(self) -> bool:
        try:
            await self.client.request("GET", retry=False, timeout=5)
        except (StoreUnavailable, CouchError):
            return False
        return True

    @property
    def spool(self) -> Spool:
        """Request bodies are received whole into temporary files (STOW
        streams each part from there to CouchDB): no part directory."""
        return self._spool

    # -- queries ----------------------------------------------------------------

    async def _read(self, what: str, read: Callable[[], Awaitable[T]]) -> T:
        """Run a read, again (with backoff) when the database answers with an
        error that a retry may not see (see ``common.READ_ATTEMPTS``); when
        it persists, :class:`StoreUnavailable` (503 with Retry-After)."""
        delay = READ_BACKOFF
        for attempt in range(READ_ATTEMPTS):
            try:
                return await read()
            except (Missing, Conflict):
                raise
            except CouchError as exc:
                if exc.status in (401, 403) or attempt == READ_ATTEMPTS - 1:
                    log.warn("CouchDB {what} failed: {status} {error}", what=what, status=exc.status, error=exc.error)
                    raise StoreUnavailable(f"CouchDB {what} failed") from None
                log.debug("CouchDB {what} failed ({status}); retrying", what=what, status=exc.status)
            await deferLater(self.reactor, random.uniform(delay / 2, delay))
            delay *= 2
        raise AssertionError("not reached")

    async def instances(self, study: str, series: str | None = None,
                        sop: str | None = None) -> list[InstanceRecord]:
        return await self._read("instance read", lambda: self._instances(study, series, sop))

    async def _instances(self, study: str, series: str | None, sop: str | None) -> list[InstanceRecord]:
        docs = await self._select(study, series, sop, ["study", "series", "sop", "sop_class", "ts", "size",
                                                       "frames", "bulk", "att", "series_number", "instance_number"])
        return [
            InstanceRecord(
                study_uid=d["study"], series_uid=d["series"], sop_uid=d["sop"], sop_class_uid=d["sop_class"],
                transfer_syntax_uid=d["ts"], size=d["size"],
                frames=None if d.get("frames") is None else [[(int(o), int(n)) for o, n in f] for f in d["frames"]],
                bulk={k: (int(v[0]), int(v[1])) for k, v in (d.get("bulk") or {}).items()},
                location=f"{instance_id(d['sop'])}/{d['att']}",
            )
            for d in docs
        ]

    async def metadata(self, study: str, series: str | None = None,
                       sop: str | None = None) -> list[bytes]:
        docs = await self._read("metadata read", lambda: self._select(
            study, series, sop, ["meta", "series", "sop", "series_number", "instance_number"]))
        return [d["meta"].encode("utf-8") for d in docs]

    async def version(self, study: str, series: str | None = None) -> str:
        """The study document's revision, for a series too: every STOW that
        stores or replaces an instance of the study rewrites that document
        (its ``at`` changes), every reject or delete changes its counts, and
        it is written after the instance documents it describes."""
        doc = await self.docs.get("s:" + study)
        if not doc:
            raise not_found(series)
        return str(doc["_rev"])

    async def _select(self, study: str, series: str | None, sop: str | None, fields: list[str]) -> list[dict[str, Any]]:
        if sop is not None:
            doc = await self.docs.get(instance_id(sop))
            if (not doc or doc.get("state") != "stored" or doc.get("study") != study
                    or (series is not None and doc.get("series") != series)):
                raise not_found(series, sop)
            return [doc]
        docs = await self.docs.instances(study, series, "stored", fields)
        if not docs:
            raise not_found(series, sop)
        docs.sort(key=lambda d: retrieval_key(d.get("series_number"), d["series"], d.get("instance_number"), d["sop"]))
        return docs

    # -- reading bytes ------------------------------------------------------------

    async def _attachment(self, record: InstanceRecord, headers: dict[str, str] | None = None) -> Any:
        doc_id, att = record.location.rsplit("/", 1)
        try:
            return await self.client.request("GET", f"{doc_path(doc_id)}/{doc_path(att)}", headers=headers,
                                             stream=True)
        except Missing:
            raise NotFound("no such instance (it was replaced)") from None

    async def read(self, record: InstanceRecord, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        response = await self._attachment(record, {"Range": f"bytes={offset}-{offset + length - 1}"})
        stream = BodyStream()
        response.deliverBody(stream)
        # 206: the server honoured Range (CouchDB). 200: the whole attachment
        # (pouchdb-server): skip to ``offset``, keep ``length``, hang up.
        skip = 0 if response.code == 206 else offset
        out: list[bytes] = []
        have = 0
        try:
            while have < length:
                data = await stream.next()
                if data is None:
                    break
                if skip:
                    if len(data) <= skip:
                        skip -= len(data)
                        continue
                    data, skip = data[skip:], 0
                out.append(data[: length - have])
                have += len(out[-1])
        finally:
            stream.abort()
        return b"".join(out)

    def local_path(self, record: InstanceRecord) -> str | None:
        return None  # attachments live in CouchDB

    async def chunks(self, record: InstanceRecord, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        response = await self._attachment(record)
        stream = BodyStream(high_water=max(4 * chunk_size, 1 << 20))
        response.deliverBody(stream)
        try:
            while True:
                data = await stream.next()
                if data is None:
                    return
                yield data
        finally:
            stream.abort()

    # -- storing ------------------------------------------------------------------

    async def store_batch(self, items: Sequence[StoreItem]) -> list[StoreOutcome]:
        items = list(items)
        if not items:
            return []
        digests: list[_Digest] = await deferToThreadPool(
            self.reactor, self._pool, lambda: [_digest(i.source, i.offset, i.length) for i in items])
        ids = sorted({instance_id(i.info.sop_uid) for i in items})
        existing = await self.docs.get_docs(ids)
        studies = {i.info.study_uid for i in items} | {d["study"] for d in existing.values() if d.get("study")}
        journal = await self.docs.open_journal(studies, docs=ids)
        touched: set[str] = set()
        outcomes: list[StoreOutcome | None] = [None] * len(items)

        # Items with the same SOP Instance UID go one after the other, in order.
        groups: dict[str, list[int]] = {}
        for n, item in enumerate(items):
            groups.setdefault(item.info.sop_uid, []).append(n)

        written: list[tuple[dict[str, Any], dict[str, Any] | None]] = []

        async def run_group(indices: list[int]) -> None:
            for n in indices:
                doc_id = instance_id(items[n].info.sop_uid)
                outcomes[n] = await self._store_one(items[n], digests[n], existing.pop(doc_id, None), touched,
                                                    written)

        await gather(run_group(g) for g in groups.values())
        # QIDO keys of the new versions, before the batch is acknowledged.
        await couchsearch.sync_instance_keys(self.docs, written)
        # Change-feed events, before the batch is acknowledged (couchchanges).
        await couchchanges.write_events(self.docs, couchchanges.created_events(d for d, _ in written))
        await self.aggregates.refresh(touched, _level_hints(items, outcomes))
        await self.docs.close_journal(journal)  # if that fails, the sweep removes it
        return [o or StoreOutcome("failed", "not processed", PROCESSING_FAILURE) for o in outcomes]

    async def _store_one(self, item: StoreItem, digest: _Digest, current: dict[str, Any] | None,
                         touched: set[str], written: list[tuple[dict[str, Any], dict[str, Any] | None]]
                         ) -> StoreOutcome:
        info = item.info
        doc_id = instance_id(info.sop_uid)
        path = doc_path(doc_id)
        first = True
        for attempt in range(ATTEMPTS):
            if not first:
                current = await self.docs.get(doc_id)
                await deferLater(self.reactor, random.uniform(0, 0.02 * attempt))
            first = False
            stored = current is not None and current.get("state") == "stored"
            if stored and current is not None:
                touched.add(current["study"])
                if current.get("sha256") == digest.sha256 and current.get("size") == item.length:
                    touched.add(info.study_uid)
                    return StoreOutcome("unchanged")
            att = "p10-" + uuid.uuid4().hex[:16]
            params = {"rev": current["_rev"]} if current else None
            try:
                async with self._uploads:
                    result = await self.client.request(
                        "PUT", f"{path}/{att}", params=params, headers={"Content-Type": "application/dicom"},
                        body=lambda: RangeProducer(item.source, item.offset, item.length, self.reactor),
                        timeout=60 + item.length / (5 << 20))
            except Conflict:
                continue
            except CouchError as exc:
                log.error("CouchDB refused an attachment: {status} {error}", status=exc.status, error=exc.error)
                return StoreOutcome("failed", "storage write failed", PROCESSING_FAILURE)
            self.docs.remember(doc_id, result["rev"])
            doc = self._instance_doc(info, digest, item.length, att, doc_id, result["rev"], self.docs.site)
            try:
                await self.docs.put(doc_id, doc)
            except Conflict:
                continue
            except CouchError as exc:
                log.error("CouchDB refused an instance document: {status} {error}", status=exc.status, error=exc.error)
                return StoreOutcome("failed", "index write failed", PROCESSING_FAILURE)
            touched.add(info.study_uid)
            written.append((doc, current if stored else None))
            return StoreOutcome("replaced" if stored else "stored")
        log.error("gave up storing an instance after {n} conflicting writes", n=ATTEMPTS)
        return StoreOutcome("failed", "too many concurrent writes", PROCESSING_FAILURE)

    @staticmethod
    def _instance_doc(info: InstanceInfo, digest: _Digest, size: int, att: str, doc_id: str, rev: str,
                      site: str) -> dict[str, Any]:
        return {
            "_id": doc_id,
            "_rev": rev,
            "doctype": "instance",
            "state": "stored",
            "site": site,
            "study": info.study_uid,
            "series": info.series_uid,
            "sop": info.sop_uid,
            "sop_class": info.sop_class_uid,
            "ts": info.transfer_syntax_uid,
            "size": size,
            "sha256": digest.sha256,
            "att": att,
            "modality": first_text(info.series, "00080060"),
            "series_number": int_value(info.series, "00200011"),
            "instance_number": int_value(info.instance, "00200013"),
            "o": couchsearch.instance_order(info.instance, info.sop_uid),
            "study_attrs": info.study,
            "series_attrs": info.series,
            "instance_attrs": info.instance,
            "frames": info.frames,
            "bulk": {k: list(v) for k, v in info.bulk.items()},
            "meta": info.metadata_bytes().decode("utf-8"),
            "stored_at": time.time(),
            "ev": couchchanges.new_token(),  # names this change's feed event
            "_attachments": {att: {"stub": True, "digest": digest.md5, "content_type": "application/dicom",
                                   "length": size}},
        }

    # -- delete and reject (see couchremove) ------------------------------------------

    async def delete(self, study: str, series: str | None = None, sop: str | None = None) -> int:
        return await self.removal.delete(study, series, sop)

    async def reject(self, study: str, series: str | None, sop: str | None, code: str, scheme: str) -> int:
        return await self.removal.reject(study, series, sop, code, scheme)

    async def purge_rejected(self, older_than: float) -> int:
        return await self.removal.purge_rejected(older_than)

    # -- crash repair -------------------------------------------------------------------

    async def orphan_keys(self, delete: bool = False, grace: float = 60.0) -> list[str]:
        """QIDO key documents no current document owns (left by a crash):
        their ids, deleted with ``delete`` (see :mod:`.couchorphans`)."""
        from . import couchorphans

        return await couchorphans.collect(self.docs, self.reactor, delete, grace)

    async def sweep(self, grace: float = JOURNAL_GRACE, finish: bool = True) -> int:
        """Redo the aggregates of batches whose frontend may have died.

        Only this site's journals (a journal replicated from another site is
        that site's business). With ``finish`` (the periodic sweep): the
        journals of a frontend whose heartbeat stopped (DEAD_AFTER), and any
        older than REPAIR_AFTER, are repaired (recomputing is idempotent and
        safe next to a live writer); those of a dead frontend, and any older
        than ``grace``, are also finished: their never-stored instance docs
        are deleted and the journal removed. Without ``finish`` (on start):
        every journal of the site is repaired, none finished.
        """
        journals = [j for j in await self.docs.journals() if j.get("site", self.docs.site) == self.docs.site]
        now = time.time()
        if finish:
            dead = await self._dead_frontends({str(j["fe"]) for j in journals if j.get("fe")})
            journals = [j for j in journals if j.get("fe") in dead
                        or now - float(j.get("at", now)) >= min(REPAIR_AFTER, grace)]
        else:
            dead = set()
        if not journals:
            return 0
        studies = {s for j in journals for s in j.get("studies", [])}
        await self.aggregates.refresh(studies, LevelHints(ensure_keys=True))
        # The batch may have stopped before its instances' QIDO keys were written.
        docs = await self.docs.get_docs({d for j in journals for d in j.get("docs", [])})
        await couchsearch.sync_keys(self.docs, [([], couchsearch.instance_key_docs(d)) for d in docs.values()
                                                if d.get("state") == "stored"])
        # A delete/reject may have stopped before its instances' keys were removed.
        removed = await self.docs.get_docs({instance_id(sop) for j in journals for sop in j.get("removed", [])})
        await couchsearch.forget_instances(self.docs, [d for d in removed.values() if d.get("state") != "stored"])
        # The change-feed events of those batches (ids known from the documents: no duplicates).
        await couchchanges.write_events(self.docs, couchchanges.repair_events([*docs.values(), *removed.values()]))
        finished = 0
        for j in journals:
            if not finish or (j.get("fe") not in dead and now - float(j.get("at", now)) < grace):
                continue
            for doc_id in j.get("docs", []):
                doc = await self.docs.get(doc_id)
                if doc and doc.get("state") != "stored":
                    await self.docs.discard(doc_id, doc["_rev"])
            await self.docs.discard(j["_id"], j["_rev"])
            finished += 1
        log.info("repaired the aggregates of {n} interrupted batches ({m} finished)", n=len(journals), m=finished)
        return len(journals)

    async def _dead_frontends(self, frontends: set[str]) -> set[str]:
        """Those of ``frontends`` whose heartbeat is older than DEAD_AFTER (or gone)."""
        dead = set()
        now = time.time()
        for fe in frontends - {self.docs.frontend}:
            beat = await self.docs.get(HEARTBEAT_DOC + fe)
            if beat is None or now - float(beat.get("at", 0)) > DEAD_AFTER:
                dead.add(fe)
        return dead

    async def _sweep_quietly(self) -> None:
        try:
            await self.sweep()
        except (StoreUnavailable, CouchError) as exc:
            log.warn("journal sweep postponed: {error}", error=type(exc).__name__)
        except Exception:  # the next sweep runs anyway; say why this one did not
            log.failure("journal sweep failed")

    # -- operations -------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """Replication and change-follower status of this database, for
        ``dicomweb-admin status`` (needs no :meth:`open`; reads only)."""
        info = await self.client.request("GET")
        site, schema, checkpoint = await gather([self.docs.get(SITE_DOC), self.docs.get(SCHEMA_DOC),
                                                 self.docs.get(CHECKPOINT_DOC)])
        journals = await self.docs.journals()
        mine = (site or {}).get("site")
        follower: dict[str, Any] = {"seq": None}
        if checkpoint:
            follower = {"seq": checkpoint.get("seq"), "at": checkpoint.get("at"), "frontend": checkpoint.get("frontend"),
                        "lag": _seq_number(info.get("update_seq")) - _seq_number(checkpoint.get("seq"))}
        return {
            "database": self.client.safe_url, "update_seq": info.get("update_seq"), "doc_count": info.get("doc_count"),
            "schema": (schema or {}).get("version"), "site": mine, "follower": follower,
            "journals": {"this_site": sum(1 for j in journals if j.get("site", mine) == mine),
                         "other_sites": sum(1 for j in journals if j.get("site", mine) != mine)},
            "replications": await couchrepair.replications(self.client),
        }

    # -- change feed (couchchanges) ---------------------------------------------------

    async def changes(self, offset: int, limit: int, metadata: bool) -> list[Change]:
        return await self.feed.changes(offset, limit, metadata)

    async def latest_change(self, metadata: bool) -> Change | None:
        return await self.feed.latest(metadata)

    async def wait_changes(self, offset: int, timeout: float) -> bool:
        return await self.feed.wait(offset, timeout)

    # -- search ---------------------------------------------------------------------

    async def search(self, query: Query) -> list[dict[str, Any]]:
        """QIDO answers from Mango indexes (see :mod:`couchsearch`; the
        patient level: :mod:`couchpatients`)."""
        if query.level == PATIENT:
            return await self._read("search", lambda: couchpatients.search(self.docs, query))
        return await self._read("search", lambda: couchsearch.search(self.docs, query))


def _seq_number(seq: Any) -> int:
    """The number in a change sequence: PouchDB's is one, a CouchDB 3
    cluster's starts with one (``"1234-g1AAAA..."``, summed over shards)."""
    try:
        return int(str(seq).split("-", 1)[0])
    except ValueError:
        return 0


def _level_hints(items: list[StoreItem], outcomes: list[StoreOutcome | None]) -> LevelHints:
    hints = LevelHints()
    for item, outcome in zip(items, outcomes, strict=True):
        if outcome is not None and outcome.outcome in ("stored", "replaced"):
            hints.study[item.info.study_uid] = item.info.study
            hints.series[item.info.series_uid] = item.info.series
            hints.received[item.info.study_uid] = time.time()
    return hints
