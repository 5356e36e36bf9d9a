"""Study and series documents of the CouchDB store: level attributes and
exact aggregates, recomputed from the instance documents.

``s:<StudyInstanceUID>`` holds the study attributes (latest write wins),
NumberOfStudyRelatedSeries/-Instances, ModalitiesInStudy, SOPClassesInStudy;
``se:<SeriesInstanceUID>`` the series attributes and its count. Both carry
the order key ``o`` of the search (:mod:`couchsearch`), and their QIDO key
documents are rewritten with them. A study document also names its patient
(``pk``) and when it last received an instance (``at``), from which the
patient documents (:mod:`couchpatients`) are recomputed after it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import deferLater
from twisted.logger import Logger

from ..dicom.dicomjson import first_text, int_value
from ..twistedtypes import IReactor
from . import couchsearch
from .base import StoreUnavailable
from .common import ATTEMPTS, gather
from .couchdocs import CouchDocs, instance_id
from .couchpatients import Patients, patient_key

log = Logger()

@dataclass
class LevelHints:
    """Level attributes from the batch just stored (latest write wins)."""

    study: dict[str, dict[str, Any]] = field(default_factory=dict)
    series: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: When each study last received an instance of the batch (item order).
    received: dict[str, float] = field(default_factory=dict)
    #: Write the QIDO keys of every study/series document, changed or not.
    ensure_keys: bool = False


class Aggregates:
    """Recomputes study and series documents (see the module docstring)."""

    def __init__(self, docs: CouchDocs, reactor: IReactor) -> None:
        self.docs = docs
        self.reactor = reactor
        self.patients = Patients(docs, reactor)

    async def refresh(self, studies: Iterable[str], hints: LevelHints | None = None) -> None:
        """Recompute the documents of ``studies`` and their series, concurrently."""
        hints = hints or LevelHints()
        await gather(self._refresh_study(s, hints) for s in sorted(studies))

    async def _refresh_study(self, study: str, hints: LevelHints) -> None:
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
            study_doc = await self.docs.get("s:" + study)
            series_docs = {d["series"]: d for d in await self.docs.find(
                "series-by-study", {"doctype": "series", "study": study, "series": {"$gt": None}}, limit=100000)}
            docs = await self.docs.instances(study, None, "stored",
                                             ["series", "sop_class", "modality", "series_number", "stored_at"])
            old = {d["_id"]: d for d in [study_doc, *series_docs.values()] if d}
            writes = await self._writes(study, study_doc, series_docs, docs, hints)
            result = await self.docs.bulk(writes)
            conflicts = [r for r in result if r.get("error")]
            if not conflicts:
                # QIDO keys of the study and series documents just written
                # (with ensure_keys: of all of them, for crash repair).
                pairs = [(old.pop(w["_id"], None), None if w.get("_deleted") else w) for w in writes]
                if hints.ensure_keys:
                    pairs += [(d, d) for d in old.values()]
                await couchsearch.sync_level_keys(self.docs, pairs, ensure=hints.ensure_keys)
                # The patients the study counted for before and counts for now.
                patients = {w["pk"] for w in writes if w["_id"] == "s:" + study and not w.get("_deleted")}
                if study_doc is not None:
                    patients.add(patient_key(study_doc.get("attrs") or {}))
                await self.patients.refresh(patients, ensure=hints.ensure_keys)
                return
            if any(r.get("error") != "conflict" for r in conflicts):
                log.error("CouchDB refused an aggregate write: {error}", error=conflicts[0].get("error"))
            # Exponential backoff with full jitter (5 ms doubling up to 0.5 s):
            # eight writers on one study through two frontends on a loaded
            # 2-core machine collided 20 times running with pauses of at most
            # 10 ms per attempt, and one STOW was answered 503.
            await deferLater(self.reactor, random.uniform(0, min(0.5, 0.005 * 2 ** attempt)))
        raise StoreUnavailable("could not update study aggregates (too much contention)")

    async def _writes(self, study: str, study_doc: dict[str, Any] | None, series_docs: dict[str, dict[str, Any]],
                      docs: list[dict[str, Any]], hints: LevelHints) -> list[dict[str, Any]]:
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
               "pk": patient_key(attrs), "at": _received_at(study, study_doc, docs, hints),
               "num_series": len(by_series), "num_instances": len(docs),
               "modalities": sorted(modalities), "sop_classes": sorted({d["sop_class"] for d in docs}),
               "o": couchsearch.study_order(attrs, study)}
        _changed(writes, study_doc, new)
        return writes

    async def _attrs_of(self, sop: str, field: str) -> dict[str, Any]:
        doc = await self.docs.get(instance_id(sop))
        return dict((doc or {}).get(field) or {})


def _received_at(study: str, study_doc: dict[str, Any] | None, docs: list[dict[str, Any]],
                 hints: LevelHints) -> float:
    """When the study last received an instance: when this batch stored one
    (``hints.received``); else as recorded, or the newest ``stored_at`` of its
    instances when that is later (a frontend stopped between an instance
    write and this document's: the repair then changes ``at``, and so the
    study's ``version``) or nothing is recorded (a document of schema 3 or older)."""
    if study in hints.received:
        return hints.received[study]
    newest = max((float(d.get("stored_at") or 0) for d in docs), default=0.0)
    if study_doc is not None and study_doc.get("at") is not None:
        return max(float(study_doc["at"]), newest)
    return newest


def _changed(writes: list[dict[str, Any]], old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """Queue ``new`` unless ``old`` already says the same (saves a revision)."""
    if old is not None:
        if all(old.get(k) == v for k, v in new.items()):
            return
        new["_rev"] = old["_rev"]
    writes.append(new)
