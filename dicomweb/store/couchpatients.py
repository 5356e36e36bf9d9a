"""Patient documents of the CouchDB store: the patient level of QIDO and
C-FIND (README "Patients"), kept exact like the study aggregates.

``p:<patient key>`` (``PatientID \\ IssuerOfPatientID``, the embedded store's
key) holds the patient attributes of the study that most recently received
an instance (study documents carry that time as ``at`` and their patient key
as ``pk``), NumberOfPatientRelatedStudies/-Series/-Instances summed over the
patient's study documents (index ``studies-by-patient-key``), and the order
key ``o`` (PatientID then IssuerOfPatientID, code point order, digits only:
see :mod:`couchsearch`). Its match keys are QIDO key documents of level
``patient`` under the ``patient/`` paths.

Like a study document, a patient document is recomputed from what it
summarises, never incremented, and written with the revision read before
that read (optimistic concurrency), so the last successful write counted
every study written before it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from twisted.internet.task import deferLater
from twisted.logger import Logger

from ..dicom import levels
from ..dicom.query import PATIENT, Filter, Query, project
from ..twistedtypes import IReactor
from . import couchsearch
from .base import StoreUnavailable
from .common import ATTEMPTS, gather
from .couchdocs import CouchDocs

log = Logger()

_STUDY_FIELDS = ["study", "attrs", "at", "num_series", "num_instances"]


def patient_key(study_attrs: dict[str, Any]) -> str:
    """The patient key of study attributes (the same as the embedded store's)."""
    patient_id, issuer = levels.patient_identity(study_attrs)
    return patient_id + "\\" + issuer


def patient_order(attrs: dict[str, Any]) -> str:
    patient_id, issuer = levels.patient_identity(attrs)
    return couchsearch.encode_asc(patient_id) + couchsearch.encode_asc(issuer)


def patient_answer(doc: dict[str, Any]) -> dict[str, Any]:
    return levels.patient_json(doc.get("attrs") or {}, doc.get("num_studies", 0), doc.get("num_series", 0),
                               doc.get("num_instances", 0))


class Patients:
    """Recomputes patient documents (see the module docstring)."""

    def __init__(self, docs: CouchDocs, reactor: IReactor) -> None:
        self.docs = docs
        self.reactor = reactor

    async def refresh(self, keys: Iterable[str], ensure: bool = False) -> None:
        """Recompute the documents of the patients ``keys``; with ``ensure``
        rewrite their match keys even when unchanged (crash repair)."""
        await gather(self._refresh_one(key, ensure) for key in sorted(set(keys)))

    async def _refresh_one(self, key: str, ensure: bool) -> None:
        for attempt in range(ATTEMPTS):
            old = await self.docs.get("p:" + key)
            studies = await self.docs.find("studies-by-patient-key",
                                           {"doctype": "study", "pk": key, "study": {"$gt": None}},
                                           fields=_STUDY_FIELDS, limit=100_000)
            new = _patient_doc(key, studies)
            if new is None:
                writes = [{"_id": old["_id"], "_rev": old["_rev"], "_deleted": True}] if old else []
            elif old is not None and all(old.get(k) == v for k, v in new.items()):
                writes = []
            else:
                if old is not None:
                    new["_rev"] = old["_rev"]
                writes = [new]
            result = await self.docs.bulk(writes)
            if not any(r.get("error") for r in result):
                if writes or ensure:
                    await couchsearch.sync_level_keys(self.docs, [(old, new)], ensure=ensure)
                return
            await deferLater(self.reactor, random.uniform(0, 0.01 * (attempt + 1)))
        raise StoreUnavailable("could not update a patient document (too much contention)")


def _patient_doc(key: str, studies: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not studies:
        return None
    latest = max(studies, key=lambda d: (d.get("at") or 0, d["study"]))
    attrs = levels.patient_attrs(latest.get("attrs") or {})
    return {"_id": "p:" + key, "doctype": "patient", "pk": key, "attrs": attrs,
            "num_studies": len(studies),
            "num_series": sum(d.get("num_series", 0) for d in studies),
            "num_instances": sum(d.get("num_instances", 0) for d in studies),
            "o": patient_order(attrs)}


# --------------------------------------------------------------------------
# Search


async def search(docs: CouchDocs, query: Query) -> list[dict[str, Any]]:
    """Patient level answers: candidates from the key documents (as for
    studies, :func:`couchsearch.candidate_owners`), each re-checked with the
    reference matcher, in patient order; with no usable filter, a walk of
    ``patients-by-order``."""
    if query.limit <= 0:
        return []
    filters = list(query.filters_at(PATIENT))
    candidates: set[str] | None = None
    for found in await gather([couchsearch.candidate_owners(docs, f) for f in filters]):
        if found is not None:
            candidates = set(found) if candidates is None else candidates & set(found)
    if candidates is not None:
        got = await docs.get_docs("p:" + key for key in candidates)
        ordered = sorted((d for d in got.values() if d.get("doctype") == "patient"), key=lambda d: d["o"])
        matched = [d for d in ordered if _ok(filters, d)]
        page = matched[query.offset:query.offset + query.limit]
    elif not filters:
        page = await docs.find("patients-by-order", {"doctype": "patient", "o": {"$gt": None}},
                               limit=query.limit, skip=query.offset)
    else:
        page = await _walk(docs, query, filters)
    items = [patient_answer(d) for d in page]
    if query.include_all:
        return [project(query, item) for item in items]
    tags = query.return_tags()
    return [{tag: item[tag] for tag in tags if tag in item} for item in items]


def _ok(filters: list[Filter], doc: dict[str, Any]) -> bool:
    attrs = doc.get("attrs") or {}
    return all(couchsearch.filter_matches(f, attrs) for f in filters)


async def _walk(docs: CouchDocs, query: Query, filters: list[Filter]) -> list[dict[str, Any]]:
    """Every patient in order, checked (every filter matched too many keys)."""
    skip, out = query.offset, []
    last, size = None, 16
    while True:
        page = await docs.find("patients-by-order", {"doctype": "patient", "o": {"$gt": last}}, limit=size)
        for doc in page:
            if not _ok(filters, doc):
                continue
            if skip:
                skip -= 1
                continue
            out.append(doc)
            if len(out) >= query.limit:
                return out
        if len(page) < size:
            return out
        last, size = page[-1]["o"], min(size * 4, 1000)
