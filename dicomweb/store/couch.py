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
    j:<random>           a journal entry per STOW batch in flight (crash repair).
    q:<hash>             QIDO match keys, one per (level, owner, generation,
                         path, key): see :mod:`couchsearch`.
    _local/dicomweb-schema  the schema version (indexes are created idempotently).

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
   index (see :meth:`CouchStore._refresh_study`) with optimistic concurrency;
4. the STOW response is sent.

A crash between 2 and 3 leaves correct instances but stale aggregates; the
batch's journal document, written before 1 and deleted after 3, lets any
frontend redo 3 (on start and every minute).
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from twisted.internet.defer import DeferredSemaphore
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ..dicom.analyze import PROCESSING_FAILURE, InstanceInfo
from ..dicom.dicomjson import first_text, int_value
from ..dicom.order import retrieval_key
from ..dicom.query import Query
from . import couchremove, couchsearch
from .base import InstanceRecord, NotFound, Spool, StoreItem, StoreOutcome, StoreUnavailable, not_found
from .common import ATTEMPTS, PAGE, gather
from .couchhttp import BodyStream, Conflict, CouchClient, CouchError, Missing, RangeProducer, doc_path

log = Logger()

#: 2: order keys ``o`` on level documents, QIDO key documents, search indexes.
SCHEMA_VERSION = 2
SCHEMA_DOC = "_local/dicomweb-schema"
DDOC = "dicomweb-v1"

#: Mango indexes (name -> fields). Every query names its index (``use_index``)
#: and puts every index field in its selector and sort (see ``_find``).
INDEXES: dict[str, list[str]] = {
    "instances-by-study": ["doctype", "state", "study", "sop"],
    "instances-by-series": ["doctype", "state", "series", "sop"],
    "studies-by-date": ["doctype", "od", "ot", "study"],
    "studies-by-patient": ["doctype", "pid", "od", "ot", "study"],
    "series-by-study": ["doctype", "study", "series"],
    "journal": ["doctype", "at"],
}
#: Design documents of older schema versions, removed on upgrade.
OBSOLETE_DDOCS: tuple[str, ...] = ()

NULL_LAST = 1e15  # sort key of a missing date/time: after every real one
JOURNAL_GRACE = 120.0  # seconds before another frontend may finish a batch's journal


@dataclass
class _Digest:
    sha256: str
    md5: str  # CouchDB attachment digest: "md5-" + base64


def _digest(source: BinaryIO, offset: int, length: int) -> _Digest:
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


def _desc_key(text: Any) -> float:
    """A number that sorts a DA/TM value descending, missing values last."""
    if text is None:
        return NULL_LAST
    digits = "".join(c for c in str(text) if c.isdigit() or c == ".")
    try:
        return -float(digits)
    except ValueError:
        return NULL_LAST


def _instance_doc_id(sop: str) -> str:
    return "i:" + sop


class CouchStore:
    """CouchDB (or any server speaking its HTTP API) through treq."""

    name = "couch"

    def __init__(self, url: str, database: str, reactor: Any, pool: Any, *, user: str | None = None,
                 password: str | None = None, spool_dir: str | None = None, concurrency: int = 16,
                 timeout: float = 30.0, retry_for: float = 5.0, ca_file: str | None = None) -> None:
        self.client = CouchClient(url, database, reactor, user=user, password=password, concurrency=concurrency,
                                  timeout=timeout, retry_for=retry_for, ca_file=ca_file)
        self.reactor = reactor
        self._pool = pool
        self.spool_dir = spool_dir
        self._spool = Spool(spool_dir)
        self._uploads = DeferredSemaphore(max(2, concurrency // 2))
        self._sweeper: LoopingCall | None = None

    # -- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        if self.spool_dir:
            os.makedirs(self.spool_dir, exist_ok=True)
        delay = 0.5
        while True:
            try:
                await self._open_once()
                break
            except StoreUnavailable:
                log.warn("CouchDB at {url} is not reachable yet; retrying in {delay:.0f}s",
                         url=self.client.safe_url, delay=delay)
            await deferLater(self.reactor, delay)
            delay = min(delay * 2, 10)
        await self.sweep(grace=0.0, finish=False)
        self._sweeper = LoopingCall(self._sweep_quietly)
        self._sweeper.clock = self.reactor
        self._sweeper.start(60, now=False)
        log.info("CouchDB store ready at {url} (schema {version})", url=self.client.safe_url, version=SCHEMA_VERSION)

    async def _open_once(self) -> None:
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
        schema = await self.client.get_or_none(doc_path(SCHEMA_DOC))
        version = int(schema.get("version", 0)) if schema else 0
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"the CouchDB database has schema {version}, newer than this server ({SCHEMA_VERSION})")
        # Creating an index that exists is a no-op ("result": "exists"): always
        # ensure them, so a deleted index comes back.
        for name, fields in INDEXES.items():
            await self.client.post("_index", {"index": {"fields": fields}, "ddoc": DDOC, "name": name, "type": "json"})
        for name, fields in couchsearch.INDEXES.items():
            await self.client.post("_index", {"index": {"fields": fields}, "ddoc": couchsearch.DDOC, "name": name,
                                              "type": "json"})
        if 0 < version < 2:
            await self._upgrade_1_to_2()
        if version < SCHEMA_VERSION:
            for ddoc in OBSOLETE_DDOCS:
                old = await self.client.get_or_none(doc_path("_design/" + ddoc))
                if old:
                    await self.client.request("DELETE", doc_path("_design/" + ddoc), params={"rev": old["_rev"]})
            body = {"version": SCHEMA_VERSION, "indexes": sorted(INDEXES), "upgraded_at": time.time()}
            if schema:
                body["_rev"] = schema["_rev"]
            await self.client.put(doc_path(SCHEMA_DOC), body)
            log.info("CouchDB schema upgraded from {old} to {new}", old=version, new=SCHEMA_VERSION)

    async def _upgrade_1_to_2(self) -> None:
        """Order keys and QIDO key documents for what a version 1 server stored."""
        log.info("CouchDB schema 1 -> 2: writing QIDO keys of stored instances")

        async def instance_page(skip: int, limit: int) -> list[dict[str, Any]]:
            return await self._find("instances-by-study", {"doctype": "instance", "state": "stored",
                                                           "study": {"$gt": None}, "sop": {"$gt": None}},
                                    fields=["_id"], limit=limit, skip=skip)

        count = await couchsearch.upgrade_instances(self.client, instance_page)
        studies: list[str] = []
        while True:
            page = await self._find("studies-by-date", {"doctype": "study", "od": {"$gt": None}, "ot": {"$gt": None},
                                                        "study": {"$gt": None}}, fields=["study"], skip=len(studies))
            studies.extend(d["study"] for d in page)
            if len(page) < PAGE:
                break
        await self._refresh_studies(studies, _Hints(ensure_keys=True))
        log.info("CouchDB schema 1 -> 2: {n} instances and {m} studies indexed", n=count, m=len(studies))

    async def close(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        await self.client.close()

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

    async def _find(self, index: str, selector: dict[str, Any], fields: list[str] | None = None,
                    limit: int = PAGE, skip: int = 0) -> list[dict[str, Any]]:
        """One Mango ``_find`` on a named index, sorted by the index fields.

        Selectors are data (dicts) built from validated values, never text.
        Every index field must be in the selector: CouchDB needs the sort
        fields there, and pouchdb-server ignores other fields otherwise.
        """
        missing = [f for f in INDEXES[index] if f not in selector]
        assert not missing, f"selector lacks index fields {missing}"
        body: dict[str, Any] = {
            "selector": selector,
            "sort": [{f: "asc"} for f in INDEXES[index]],
            "use_index": [DDOC, index],
            "limit": limit,
        }
        if skip:
            body["skip"] = skip
        if fields is not None:
            body["fields"] = fields
        result = await self.client.post("_find", body)
        if result.get("warning") and "index" in str(result["warning"]).lower():
            log.warn("CouchDB _find on {index} did not use the index: {warning}", index=index, warning=result["warning"])
        docs: list[dict[str, Any]] = result.get("docs", [])
        return docs

    async def _stored_instances(self, study: str | None = None, series: str | None = None,
                                fields: list[str] | None = None) -> list[dict[str, Any]]:
        """Every stored instance doc of a study or series, paged by SOP UID
        (keyset pagination: no skip, exact under concurrent writes)."""
        if fields is not None:
            fields = sorted({*fields, "sop"})
        out: list[dict[str, Any]] = []
        last = ""
        while True:
            selector: dict[str, Any] = {"doctype": "instance", "state": "stored", "sop": {"$gt": last}}
            if series is not None:
                selector["series"] = series
                if study is not None:
                    selector["study"] = study
                index = "instances-by-series"
            else:
                selector["study"] = study
                index = "instances-by-study"
            page = await self._find(index, selector, fields)
            out.extend(page)
            if len(page) < PAGE:
                return out
            last = page[-1]["sop"]

    async def instances(self, study: str, series: str | None = None,
                        sop: str | None = None) -> list[InstanceRecord]:
        docs = await self._select(study, series, sop, ["study", "series", "sop", "sop_class", "ts", "size",
                                                       "frames", "bulk", "att", "series_number", "instance_number"])
        return [
            InstanceRecord(
                study_uid=d["study"], series_uid=d["series"], sop_uid=d["sop"], sop_class_uid=d["sop_class"],
                transfer_syntax_uid=d["ts"], size=d["size"],
                frames=None if d.get("frames") is None else [[(int(o), int(n)) for o, n in f] for f in d["frames"]],
                bulk={k: (int(v[0]), int(v[1])) for k, v in (d.get("bulk") or {}).items()},
                location=f"{_instance_doc_id(d['sop'])}/{d['att']}",
            )
            for d in docs
        ]

    async def metadata(self, study: str, series: str | None = None,
                       sop: str | None = None) -> list[bytes]:
        docs = await self._select(study, series, sop, ["meta", "series", "sop", "series_number", "instance_number"])
        return [d["meta"].encode("utf-8") for d in docs]

    async def _select(self, study: str, series: str | None, sop: str | None, fields: list[str]) -> list[dict[str, Any]]:
        if sop is not None:
            doc = await self.client.get_or_none(doc_path(_instance_doc_id(sop)))
            if (not doc or doc.get("state") != "stored" or doc.get("study") != study
                    or (series is not None and doc.get("series") != series)):
                raise not_found(series, sop)
            return [doc]
        docs = await self._stored_instances(study, series, fields)
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
        ids = sorted({_instance_doc_id(i.info.sop_uid) for i in items})
        existing = await self._get_docs(ids)
        studies = {i.info.study_uid for i in items} | {d["study"] for d in existing.values() if d and d.get("study")}
        journal = await self.client.post("", {"doctype": "journal", "at": time.time(), "studies": sorted(studies),
                                              "docs": ids})
        touched: set[str] = set()
        outcomes: list[StoreOutcome | None] = [None] * len(items)

        # Items with the same SOP Instance UID go one after the other, in order.
        groups: dict[str, list[int]] = {}
        for n, item in enumerate(items):
            groups.setdefault(item.info.sop_uid, []).append(n)

        written: list[tuple[dict[str, Any], dict[str, Any] | None]] = []

        async def run_group(indices: list[int]) -> None:
            for n in indices:
                doc_id = _instance_doc_id(items[n].info.sop_uid)
                outcomes[n] = await self._store_one(items[n], digests[n], existing.pop(doc_id, None), touched,
                                                    written)

        await gather(run_group(g) for g in groups.values())
        # QIDO keys of the new versions, before the batch is acknowledged.
        await couchsearch.sync_instance_keys(self.client, written)
        hints = _level_hints(items, outcomes)
        await self._refresh_studies(touched, hints)
        try:
            await self.client.request("DELETE", doc_path(journal["id"]), params={"rev": journal["rev"]})
        except CouchError:
            pass  # the sweeper removes it
        return [o or StoreOutcome("failed", "not processed", PROCESSING_FAILURE) for o in outcomes]

    async def _get_docs(self, ids: list[str]) -> dict[str, dict[str, Any] | None]:
        result = await self.client.post("_all_docs", {"keys": ids}, params={"include_docs": "true"})
        out: dict[str, dict[str, Any] | None] = {}
        for row in result.get("rows", []):
            doc = row.get("doc")
            out[row["key"]] = doc if doc and not row.get("value", {}).get("deleted") else None
        return out

    async def _store_one(self, item: StoreItem, digest: _Digest, current: dict[str, Any] | None,
                         touched: set[str], written: list[tuple[dict[str, Any], dict[str, Any] | None]]
                         ) -> StoreOutcome:
        info = item.info
        doc_id = _instance_doc_id(info.sop_uid)
        path = doc_path(doc_id)
        first = True
        for attempt in range(ATTEMPTS):
            if not first:
                current = await self.client.get_or_none(path)
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
            doc = self._instance_doc(info, digest, item.length, att, doc_id, result["rev"])
            try:
                await self.client.put(path, doc)
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
    def _instance_doc(info: InstanceInfo, digest: _Digest, size: int, att: str, doc_id: str, rev: str) -> dict[str, Any]:
        return {
            "_id": doc_id,
            "_rev": rev,
            "doctype": "instance",
            "state": "stored",
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
            "_attachments": {att: {"stub": True, "digest": digest.md5, "content_type": "application/dicom",
                                   "length": size}},
        }

    # -- aggregates -----------------------------------------------------------------

    async def _refresh_studies(self, studies: Iterable[str], hints: _Hints | None = None) -> None:
        hints = hints or _Hints()
        await gather(self._refresh_study(s, hints) for s in sorted(studies))

    async def _refresh_study(self, study: str, hints: _Hints) -> None:
        """Recompute a study's and its series' aggregate docs, exactly.

        Optimistic concurrency: the aggregate docs' revisions are read
        *before* the instance query, and written with those revisions. If a
        concurrent writer stored an instance after our query, it writes the
        aggregates after us (and we get 409 and start over, or it gets 409 and
        starts over): the last successful write always counted every
        instance stored before it. No counter is ever incremented, so
        replacements, moves and retries cannot drift.
        """
        for attempt in range(ATTEMPTS):
            study_doc = await self.client.get_or_none(doc_path("s:" + study))
            series_docs = {d["series"]: d for d in await self._find(
                "series-by-study", {"doctype": "series", "study": study, "series": {"$gt": None}}, limit=100000)}
            docs = await self._stored_instances(study, None, ["series", "sop_class", "modality", "series_number"])
            old = {d["_id"]: d for d in [study_doc, *series_docs.values()] if d}
            writes = await self._aggregate_writes(study, study_doc, series_docs, docs, hints)
            result = await self.client.post("_bulk_docs", {"docs": writes}) if writes else []
            conflicts = [r for r in result if r.get("error")]
            if not conflicts:
                # QIDO keys of the study and series documents just written
                # (with ensure_keys: of all of them, for crash repair).
                pairs = [(old.pop(w["_id"], None), None if w.get("_deleted") else w) for w in writes]
                if hints.ensure_keys:
                    pairs += [(d, d) for d in old.values()]
                await couchsearch.sync_level_keys(self.client, pairs, ensure=hints.ensure_keys)
                return
            if any(r.get("error") != "conflict" for r in conflicts):
                log.error("CouchDB refused an aggregate write: {error}", error=conflicts[0].get("error"))
            await deferLater(self.reactor, random.uniform(0, 0.01 * (attempt + 1)))
        raise StoreUnavailable("could not update study aggregates (too much contention)")

    async def _aggregate_writes(self, study: str, study_doc: dict[str, Any] | None, series_docs: dict[str, dict[str, Any]],
                                docs: list[dict[str, Any]], hints: _Hints) -> list[dict[str, Any]]:
        by_series: dict[str, list[dict[str, Any]]] = {}
        for d in docs:
            by_series.setdefault(d["series"], []).append(d)
        writes: list[dict[str, Any]] = []
        modalities: set[str] = set()
        for series, members in sorted(by_series.items()):
            old = series_docs.pop(series, None)
            attrs = hints.series.get(series)
            if attrs is None:
                attrs = old["attrs"] if old else await self._attrs_of(members[0]["sop"], "series_attrs")
            modality = first_text(attrs, "00080060")
            if modality:
                modalities.add(modality)
            new = {"_id": "se:" + series, "doctype": "series", "study": study, "series": series, "attrs": attrs,
                   "modality": modality, "series_number": int_value(attrs, "00200011"), "num_instances": len(members),
                   "o": couchsearch.series_order(attrs, series)}
            _changed(writes, old, new)
        for old in series_docs.values():  # series left without instances (moved or replaced)
            writes.append({"_id": old["_id"], "_rev": old["_rev"], "_deleted": True})
        if not docs:
            if study_doc:
                writes.append({"_id": study_doc["_id"], "_rev": study_doc["_rev"], "_deleted": True})
            return writes
        attrs = hints.study.get(study)
        if attrs is None:
            attrs = study_doc["attrs"] if study_doc else await self._attrs_of(docs[0]["sop"], "study_attrs")
        new = {"_id": "s:" + study, "doctype": "study", "study": study, "attrs": attrs,
               "pid": first_text(attrs, "00100020"), "od": _desc_key(first_text(attrs, "00080020")),
               "ot": _desc_key(first_text(attrs, "00080030")), "num_series": len(by_series), "num_instances": len(docs),
               "modalities": sorted(modalities), "sop_classes": sorted({d["sop_class"] for d in docs}),
               "o": couchsearch.study_order(attrs, study)}
        _changed(writes, study_doc, new)
        return writes

    async def _attrs_of(self, sop: str, field: str) -> dict[str, Any]:
        doc = await self.client.get_or_none(doc_path(_instance_doc_id(sop)))
        return dict((doc or {}).get(field) or {})

    # -- delete and reject (the logic is in couchremove.py) ---------------------------

    async def delete(self, study: str, series: str | None = None, sop: str | None = None) -> int:
        """Replace the instance documents (stored or rejected) by stubs without bytes."""
        return await couchremove.remove(self, study, series, sop, frozenset({"stored", "rejected"}),
                                        couchremove.deleted)

    async def reject(self, study: str, series: str | None, sop: str | None, code: str, scheme: str) -> int:
        """Mark the stored instances ``rejected`` (bytes kept until deleted or purged)."""
        return await couchremove.remove(self, study, series, sop, frozenset({"stored"}),
                                        couchremove.rejected(code, scheme))

    async def purge_rejected(self, older_than: float) -> int:
        return await couchremove.purge_rejected(self, older_than)

    async def _after_instances_removed(self, docs: list[dict[str, Any]]) -> None:
        """Hook: these instance documents (as they were before the change)
        just left search and retrieval (deleted or rejected); documents kept
        per instance beside ``i:<sop>`` go here: the QIDO key documents of
        their generation (``couchsearch``). Idempotent, and harmless after a
        restore (a new STOW writes keys of a new generation). The sweep calls
        it for an interrupted delete/reject with the documents as they are
        now: a deleted stub no longer names its generation, so its keys stay
        as stale keys, which searches re-check and ignore."""
        await couchsearch.sync_keys(self.client, [(couchsearch.instance_key_docs(d), []) for d in docs
                                                  if d.get("att") and d.get("sop") and d.get("study")])

    # -- crash repair -------------------------------------------------------------------

    async def sweep(self, grace: float = JOURNAL_GRACE, finish: bool = True) -> int:
        """Redo the aggregates of batches whose frontend may have died.

        Every journal is repaired (recomputing is idempotent and safe next to a
        live writer); journals older than ``grace`` are also finished: their
        never-stored instance docs are deleted and the journal removed.
        """
        journals = await self._find("journal", {"doctype": "journal", "at": {"$gt": None}}, limit=100000)
        if not journals:
            return 0
        studies = {s for j in journals for s in j.get("studies", [])}
        await self._refresh_studies(studies, _Hints(ensure_keys=True))
        # The batch may have stopped before its instances' QIDO keys were written.
        docs = await couchsearch.get_docs(self.client, {d for j in journals for d in j.get("docs", [])})
        await couchsearch.sync_keys(self.client, [([], couchsearch.instance_key_docs(d)) for d in docs.values()
                                                  if d.get("state") == "stored"])
        # A delete/reject may have stopped before its instances' keys were removed.
        removed = await couchsearch.get_docs(self.client, {"i:" + sop for j in journals for sop in j.get("removed", [])})
        await self._after_instances_removed([d for d in removed.values() if d.get("state") != "stored"])
        now = time.time()
        for j in journals:
            if not finish or now - float(j.get("at", now)) < grace:
                continue
            for doc_id in j.get("docs", []):
                doc = await self.client.get_or_none(doc_path(doc_id))
                if doc and doc.get("state") != "stored":
                    try:
                        await self.client.request("DELETE", doc_path(doc_id), params={"rev": doc["_rev"]})
                    except CouchError:
                        pass
            try:
                await self.client.request("DELETE", doc_path(j["_id"]), params={"rev": j["_rev"]})
            except CouchError:
                pass
        log.info("repaired the aggregates of {n} interrupted STOW batches", n=len(journals))
        return len(journals)

    async def _sweep_quietly(self) -> None:
        try:
            await self.sweep()
        except (StoreUnavailable, CouchError) as exc:
            log.warn("journal sweep postponed: {error}", error=type(exc).__name__)

    # -- search ---------------------------------------------------------------------

    async def search(self, query: Query) -> list[dict[str, Any]]:
        """QIDO answers from Mango indexes (see :mod:`couchsearch`)."""
        return await couchsearch.search(self.client, query)


@dataclass
class _Hints:
    """Level attributes from the batch just stored (latest write wins)."""

    study: dict[str, dict[str, Any]] = field(default_factory=dict)
    series: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Write the QIDO keys of every study/series document, changed or not.
    ensure_keys: bool = False


def _level_hints(items: list[StoreItem], outcomes: list[StoreOutcome | None]) -> _Hints:
    hints = _Hints()
    for item, outcome in zip(items, outcomes, strict=True):
        if outcome is not None and outcome.outcome in ("stored", "replaced"):
            hints.study[item.info.study_uid] = item.info.study
            hints.series[item.info.series_uid] = item.info.series
    return hints


def _changed(writes: list[dict[str, Any]], old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """Queue ``new`` unless ``old`` already says the same (saves a revision)."""
    if old is not None:
        if all(old.get(k) == v for k, v in new.items()):
            return
        new["_rev"] = old["_rev"]
    writes.append(new)

