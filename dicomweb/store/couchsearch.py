"""QIDO searches on the CouchDB store: a :class:`~dicomweb.dicom.query.Query`
translated into Mango ``_find`` requests on indexes.

Key documents
-------------
Mango indexes do not index array elements, and a dotted path such as
``00400275.00401001`` would be read as nesting, so the match keys of
:func:`dicomweb.dicom.query.index_entries` are written at store time as one
small document per (level, owner, generation, path, key), mirroring the
embedded store's ``qido_keys`` table::

    {"_id": "q:<sha256 of l, u, g, p, k>", "doctype": "qkey",
     "l": "patient" | "study" | "series" | "instance", "u": <owner UID or patient key>,
     "g": <generation>,
     "p": <path>, "k": <normalised key>,
     "t": <StudyInstanceUID>, "s": <SeriesInstanceUID | null>, "o": <instance order | null>}

The generation ``g`` is the instance document's attachment name (new on every
write) for instances, and a digest of the level attributes (and, for a study,
ModalitiesInStudy) for patients, studies and series (patient keys are under
the ``patient/`` paths, :func:`~dicomweb.dicom.query.key_path`). Ids are deterministic, so writing
the same keys twice is a no-op (409), and the writer that supersedes a
generation deletes that generation's keys (:func:`sync_instance_keys`,
:func:`sync_level_keys`). UIDs of a level are not written as keys: study and
series documents are read by id (``s:<uid>``, ``se:<uid>``), and instances by
``i:<uid>``.

Key documents are an accelerator only: every candidate they yield is checked
again with :func:`dicomweb.dicom.query.filter_matches` against the level JSON
read from the study, series and instance documents, so a stale key (a
frontend that died between writes, two writers racing) can never make a
search return something that does not match. A missing key could hide a
match; keys are written before a STOW is acknowledged, and the journal sweep
(on start and every minute) writes the keys of every batch that was cut short.

Search
------
1. Candidates per level: a level's UID filter gives UIDs directly; every other
   filter is one ``_find`` on the ``qkeys`` index (``p`` = path, ``k`` =
   ``$eq`` / range / literal-prefix range + ``$regex``; fuzzy filters one
   prefix range per word; value lists one ``_find`` per value), reading at
   most :data:`MAX_CANDIDATES` keys. The candidate sets of a level are
   intersected. A filter that matches more than :data:`MAX_CANDIDATES` owners
   is not used to find candidates, only to check them; when every filter of
   every level overflows, studies are walked in order and checked one by one.
2. Instance keys carry their instance's study, series and order key, and
   series documents their study, so candidates of a lower level restrict the
   levels above them.
3. The levels are joined by walking in the embedded store's order: studies
   (StudyDate + StudyTime newest first, then StudyInstanceUID), their series
   (SeriesNumber, SeriesInstanceUID), their instances (InstanceNumber,
   SOPInstanceUID), missing numbers last. Each level document holds that
   order as a digits-only string ``o`` (:func:`study_order`,
   :func:`series_order`, :func:`instance_order`) so that Mango's collation
   (ICU on CouchDB, code points on PouchDB) and Python agree on it. Without
   filters below a level, whole studies or series inside ``offset`` are
   skipped by their aggregate counts and the rest is read with ``skip`` /
   ``limit`` on ``instances-by-series-order``.

Every selector is a data structure built from validated, normalised values;
regular expressions come escaped from the query model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from ..dicom.dicomjson import int_value
from ..dicom.order import AVAILABLE, INSTANCE_NUMBER, LEVEL_UIDS, NO_NUMBER, SERIES_NUMBER, clamp, study_sort_date
from ..dicom.query import (
    MODALITIES_IN_STUDY,
    RETRIEVE_URL,
    Filter,
    Level,
    Query,
    escape_regex,
    filter_matches,
    index_entries,
    project,
)
from .common import gather
from .couchdocs import CouchDocs

log = Logger()

#: At most this many keys are read for one filter (value) to find candidates;
#: a filter matching more is used only to check the candidates of the others
#: (environment ``QIDO_COUCH_MAX_CANDIDATES``, for tests and tuning; not a
#: ``DICOMWEB_`` variable, which the settings loader would reject as unknown).
MAX_CANDIDATES = int(os.environ.get("QIDO_COUCH_MAX_CANDIDATES", "20000"))
#: Above every character a key can have after a literal prefix (see README).
TOP = "\uffff"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
_INSTANCE_FIELDS = ["sop", "series", "study", "o", "instance_attrs"]


# --------------------------------------------------------------------------
# Order keys: digits only, so ICU and code point collation agree.


def _char_code(char: str) -> str:
    cp = ord(char)
    if char == ".":
        return "02"
    if "0" <= char <= "9":
        return f"{cp - 48 + 3:02d}"
    return ("01" if cp < 0x2E else "13") + f"{cp:07d}"


def encode_asc(text: str) -> str:
    """Digits whose string order is the code point order of ``text`` (prefix-free)."""
    return "".join(_char_code(c) for c in text) + "00"


def encode_desc(text: str) -> str:
    """Digits whose string order is the reverse of ``text``'s (prefix-free)."""
    return encode_asc(text).translate(str.maketrans("0123456789", "9876543210"))


def encode_number(number: int | None) -> str:
    """19 digits in the order of :func:`~dicomweb.dicom.order.clamp` (a missing number last)."""
    return f"{clamp(number) + NO_NUMBER:019d}"


def study_order(attrs: dict[str, Any], uid: str) -> str:
    """StudyDate + StudyTime newest first (no date last), then StudyInstanceUID."""
    return encode_desc(study_sort_date(attrs)) + encode_asc(uid)


def series_order(attrs: dict[str, Any], uid: str) -> str:
    return encode_number(int_value(attrs, SERIES_NUMBER)) + encode_asc(uid)


def instance_order(attrs: dict[str, Any], uid: str) -> str:
    return encode_number(int_value(attrs, INSTANCE_NUMBER)) + encode_asc(uid)


# --------------------------------------------------------------------------
# Key documents


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]


def key_doc_id(level: str, owner: str, generation: str, path: str, key: str) -> str:
    return "q:" + hashlib.sha256("\0".join((level, owner, generation, path, key)).encode()).hexdigest()[:40]


def _key_docs(level: Level, owner: str, generation: str, level_json: dict[str, Any], study: str,
              series: str | None = None, order: str | None = None) -> list[dict[str, Any]]:
    docs = []
    for path, keys in index_entries(level, level_json).items():
        if path in LEVEL_UIDS:
            continue
        for key in keys:
            docs.append({"_id": key_doc_id(level, owner, generation, path, key), "doctype": "qkey", "l": level,
                         "u": owner, "g": generation, "p": path, "k": key, "t": study, "s": series, "o": order})
    return docs


def instance_key_docs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Key documents of a stored instance document (generation: its attachment)."""
    attrs = doc.get("instance_attrs") or {}
    return _key_docs("instance", doc["sop"], doc["att"], attrs, doc["study"], doc["series"],
                     doc.get("o") or instance_order(attrs, doc["sop"]))


def study_level_json(doc: dict[str, Any]) -> dict[str, Any]:
    """Study attributes with the ModalitiesInStudy aggregate (what is matched)."""
    out = dict(doc.get("attrs") or {})
    out[MODALITIES_IN_STUDY] = {"vr": "CS", "Value": list(doc.get("modalities") or [])}
    return out


def level_key_docs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Key documents of a patient (``p:``), study (``s:``) or series (``se:``) document."""
    if doc.get("doctype") == "patient":
        attrs = doc.get("attrs") or {}
        return _key_docs("patient", doc["pk"], _digest(attrs), attrs, "")
    if doc.get("doctype") == "study":
        level_json = study_level_json(doc)
        return _key_docs("study", doc["study"], _digest(level_json), level_json, doc["study"])
    attrs = doc.get("attrs") or {}
    return _key_docs("series", doc["series"], _digest([attrs, doc["study"]]), attrs, doc["study"], doc["series"])


async def sync_keys(docs: CouchDocs, pairs: Sequence[tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> None:
    """For each (old keys, new keys): create the new ones, delete old ones not kept."""
    create: list[dict[str, Any]] = []
    delete: list[str] = []
    for old, new in pairs:
        new_ids = {d["_id"] for d in new}
        create.extend(new)
        delete.extend(d["_id"] for d in old if d["_id"] not in new_ids)
    if create:
        await docs.create_new(create)
    if delete:
        await docs.delete_existing(delete)


async def sync_instance_keys(docs: CouchDocs, written: Sequence[tuple[dict[str, Any], dict[str, Any] | None]]) -> None:
    """Keys of instances just written (new doc, the stored doc it replaced)."""
    await sync_keys(docs, [(instance_key_docs(old) if old else [], instance_key_docs(new)) for new, old in written])


async def sync_level_keys(docs: CouchDocs, pairs: Sequence[tuple[dict[str, Any] | None, dict[str, Any] | None]],
                          ensure: bool = False) -> None:
    """Keys of study/series documents: (old doc, new doc); None = absent.

    Unchanged generations are skipped unless ``ensure`` (crash repair).
    """
    work = []
    for old, new in pairs:
        old_keys = level_key_docs(old) if old else []
        new_keys = level_key_docs(new) if new else []
        if not ensure and {d["_id"] for d in old_keys} == {d["_id"] for d in new_keys}:
            continue
        work.append((old_keys, new_keys))
    await sync_keys(docs, work)


# --------------------------------------------------------------------------
# Reading


def mango_regex(flt: Filter) -> str:
    """The filter's wildcard as a Mango ``$regex`` that may match *more*.

    ``?`` becomes ``[\\s\\S]{1,4}``: one character even where the server
    matches bytes of UTF-8 (the re-check with the reference matcher drops the
    extra matches). Everything else is escaped by the query model.
    """
    pattern = str(flt.values[0])
    parts = {"*": r"[\s\S]*", "?": r"[\s\S]{1,4}"}
    return "^" + "".join(parts.get(c) or escape_regex(c) for c in pattern) + "$"


def key_selectors(flt: Filter) -> list[tuple[str, Any]]:
    """(path, ``k`` condition) per ``_find`` a filter needs; owners must be in
    every result (fuzzy words) or in any (list values): see :func:`_owners`."""
    path = flt.key_path
    if flt.kind == "single":
        return [(path, flt.values[0])]
    if flt.kind == "list":
        return [(path, v) for v in flt.values]
    if flt.kind == "range":
        low, high = flt.values
        cond: dict[str, Any] = {}
        if low is not None:
            cond["$gte"] = low
        if high is not None:
            cond["$lte"] = high
        return [(path, cond)]
    if flt.kind == "wildcard":
        cond = {"$regex": mango_regex(flt)}
        prefix = flt.literal_prefix()
        if prefix:
            cond.update({"$gte": prefix, "$lte": prefix + TOP})
        return [(path, cond)]
    if flt.kind == "fuzzy":
        return [(path + "/fuzzy", {"$gte": w, "$lte": f"{w}{TOP}", "$regex": r}) for w, r in
                zip(flt.values, flt.prefix_regexes(), strict=True)]
    raise ValueError(f"no selector for a {flt.kind} filter")


@dataclass(frozen=True)
class _Owner:
    uid: str
    study: str
    series: str | None
    order: str | None


async def _key_owners(docs: CouchDocs, path: str, cond: Any) -> list[_Owner] | None:
    selector = {"doctype": "qkey", "p": path, "k": cond, "u": {"$gt": None}}
    keys = await docs.find("qkeys", selector, fields=["u", "t", "s", "o"], limit=MAX_CANDIDATES + 1)
    if len(keys) > MAX_CANDIDATES:
        return None
    return [_Owner(d["u"], d.get("t") or "", d.get("s"), d.get("o")) for d in keys]


async def _owners(docs: CouchDocs, flt: Filter) -> dict[str, set[_Owner]] | None:
    """uid -> owners (with their parents) matching ``flt`` by its keys, or
    None when too many match."""
    selectors = key_selectors(flt)
    results = await gather([_key_owners(docs, path, cond) for path, cond in selectors])
    if any(r is None for r in results):
        return None
    groups: list[dict[str, set[_Owner]]] = []
    for found in results:
        group: dict[str, set[_Owner]] = {}
        for owner in found or []:
            group.setdefault(owner.uid, set()).add(owner)
        groups.append(group)
    if flt.kind == "fuzzy":  # every word must be found
        common = set.intersection(*(set(g) for g in groups)) if groups else set()
        return {uid: set().union(*(g[uid] for g in groups)) for uid in common}
    out: dict[str, set[_Owner]] = {}
    for group in groups:
        for uid, owners in group.items():
            out.setdefault(uid, set()).update(owners)
    return out


async def candidate_owners(docs: CouchDocs, flt: Filter) -> set[str] | None:
    """The owners (UIDs, patient keys) whose keys match ``flt``, or None when
    too many do (then the filter only checks candidates)."""
    found = await _owners(docs, flt)
    return None if found is None else set(found)


# --------------------------------------------------------------------------
# Level JSON (as the embedded store's sqlsearch builds it)


def _url(path: str) -> dict[str, Any]:
    return {"vr": "UR", "Value": [path]}


def study_json(doc: dict[str, Any]) -> dict[str, Any]:
    uid = doc["study"]
    out: dict[str, Any] = dict(doc.get("attrs") or {})
    out[STUDY_UID] = {"vr": "UI", "Value": [uid]}
    out["00201206"] = {"vr": "IS", "Value": [doc.get("num_series", 0)]}
    out["00201208"] = {"vr": "IS", "Value": [doc.get("num_instances", 0)]}
    mods = list(doc.get("modalities") or [])
    out[MODALITIES_IN_STUDY] = {"vr": "CS", "Value": mods} if mods else {"vr": "CS"}
    sops = list(doc.get("sop_classes") or [])
    out["00080062"] = {"vr": "UI", "Value": sops} if sops else {"vr": "UI"}
    out[RETRIEVE_URL] = _url(f"studies/{uid}")
    return out


def series_json(doc: dict[str, Any]) -> dict[str, Any]:
    uid = doc["series"]
    out: dict[str, Any] = dict(doc.get("attrs") or {})
    out[SERIES_UID] = {"vr": "UI", "Value": [uid]}
    out["00201209"] = {"vr": "IS", "Value": [doc.get("num_instances", 0)]}
    out[RETRIEVE_URL] = _url(f"studies/{doc['study']}/series/{uid}")
    return out


def instance_json(row: dict[str, Any], series_url: str) -> dict[str, Any]:
    out: dict[str, Any] = dict(row.get("instance_attrs") or {})
    out[SOP_UID] = {"vr": "UI", "Value": [row["sop"]]}
    out[RETRIEVE_URL] = _url(f"{series_url}/instances/{row['sop']}")
    return out


def _ok(filters: Sequence[Filter], level_json: dict[str, Any]) -> bool:
    return all(filter_matches(f, level_json) for f in filters)


# --------------------------------------------------------------------------
# The search


@dataclass
class _Candidates:
    studies: set[str] | None = None
    series: dict[str, dict[str, Any]] | None = None  # uid -> series doc
    #: sop -> owners (study, series, order) from keys or instance documents
    instances: dict[str, set[_Owner]] | None = None
    checked: dict[Level, list[Filter]] = field(default_factory=dict)


def _meet(current: set[str] | None, new: Iterable[str]) -> set[str]:
    return set(new) if current is None else current & set(new)


class _Search:
    def __init__(self, docs: CouchDocs, query: Query) -> None:
        self.docs = docs
        self.query = query
        self.level = query.level
        self.filters: dict[Level, list[Filter]] = {lv: list(query.filters_at(lv)) for lv in ("study", "series", "instance")}
        self.skip = query.offset
        self.out: list[dict[str, Any]] = []

    @property
    def need(self) -> int:
        return self.query.limit - len(self.out)

    def _take(self, item: dict[str, Any]) -> bool:
        """Count one match; False once the page is full."""
        if self.skip:
            self.skip -= 1
        else:
            self.out.append(item)
        return self.need > 0

    async def candidates(self) -> _Candidates:
        cand = _Candidates()
        sops: set[str] | None = None
        owners: dict[str, set[_Owner]] | None = None
        series_uids: set[str] | None = None
        for level in ("study", "series", "instance"):
            lookups = []
            for flt in self.filters[level]:
                if flt.tag == STUDY_UID:
                    cand.studies = _meet(cand.studies, (str(v) for v in flt.values))
                elif flt.tag == SERIES_UID:
                    series_uids = _meet(series_uids, (str(v) for v in flt.values))
                elif flt.tag == SOP_UID:
                    sops = _meet(sops, (str(v) for v in flt.values))
                else:
                    lookups.append(flt)
            for found in await gather([_owners(self.docs, f) for f in lookups]):
                if found is None:
                    continue  # too many: only checked
                if level == "study":
                    cand.studies = _meet(cand.studies, found)
                elif level == "series":
                    series_uids = _meet(series_uids, found)
                else:
                    if owners is None:
                        owners = found
                    else:
                        owners = {u: owners[u] | found[u] for u in owners.keys() & found.keys()}
        if sops is not None:
            # Instance documents by id: the truth about their series and study.
            docs = await self.docs.get_docs("i:" + s for s in sops)
            truth = {d["sop"]: {_Owner(d["sop"], d["study"], d["series"], d.get("o") or instance_order(
                d.get("instance_attrs") or {}, d["sop"]))} for d in docs.values() if d.get("state") == "stored"}
            owners = truth if owners is None else {u: truth[u] for u in owners.keys() & truth.keys()}
        if owners is not None:
            cand.instances = owners
            all_owners = [o for group in owners.values() for o in group]
            series_uids = _meet(series_uids, (o.series or "" for o in all_owners))
            cand.studies = _meet(cand.studies, (o.study for o in all_owners))
        if series_uids is not None:
            docs = await self.docs.get_docs("se:" + s for s in series_uids)
            cand.series = {d["series"]: d for d in docs.values() if d.get("doctype") == "series"}
            cand.studies = _meet(cand.studies, (d["study"] for d in cand.series.values()))
        return cand

    async def run(self) -> list[dict[str, Any]]:
        if self.query.limit <= 0:
            return []
        cand = await self.candidates()
        if cand.studies is not None:
            docs = await self.docs.get_docs("s:" + s for s in cand.studies)
            studies = sorted((d for d in docs.values() if d.get("doctype") == "study"),
                             key=lambda d: study_order(d.get("attrs") or {}, d["study"]))
            await self.walk_studies(studies, cand)
        else:
            await self.walk_all_studies(cand)
        results = self.out
        if self.level == "instance":
            extra = set(self.query.includefields) - AVAILABLE
            if extra:
                await self._merge_metadata(results, extra)
        if self.query.include_all:
            return [project(self.query, item) for item in results]
        tags = self.query.return_tags()
        return [{tag: item[tag] for tag in tags if tag in item} for item in results]

    async def walk_all_studies(self, cand: _Candidates) -> None:
        """Every study in order (no study candidates): page through the order index."""
        lower = bool(self.filters["series"] or self.filters["instance"])
        if self.level == "study" and not self.filters["study"]:
            docs = await self.docs.find("studies-by-order", {"doctype": "study", "o": {"$gt": None}},
                              limit=self.query.limit, skip=self.query.offset)
            self.out = [study_json(d) for d in docs]
            return
        last, size = None, 16
        while True:
            docs = await self.docs.find("studies-by-order", {"doctype": "study", "o": {"$gt": last}}, limit=size)
            if not await self.walk_studies(docs, cand, lower):
                return
            if len(docs) < size:
                return
            last, size = docs[-1]["o"], min(size * 4, 1000)

    async def walk_studies(self, studies: list[dict[str, Any]], cand: _Candidates, lower: bool | None = None) -> bool:
        """Visit studies in order; False once the page is full."""
        if lower is None:
            lower = bool(self.filters["series"] or self.filters["instance"] or cand.series is not None)
        for doc in studies:
            sj = study_json(doc)
            if not _ok(self.filters["study"], sj):
                continue
            if self.level == "study":
                if not self._take(sj):
                    return False
                continue
            if not lower:
                count = doc.get("num_series" if self.level == "series" else "num_instances", 0)
                if self.skip >= count:
                    self.skip -= count
                    continue
            if cand.series is not None:
                series = sorted((d for d in cand.series.values() if d["study"] == doc["study"]),
                                key=lambda d: series_order(d.get("attrs") or {}, d["series"]))
            else:
                series = await self.docs.find("series-by-study-order",
                                    {"doctype": "series", "study": doc["study"], "o": {"$gt": None}}, limit=100_000)
            if not await self.walk_series(sj, series, cand):
                return False
        return True

    async def walk_series(self, sj: dict[str, Any], series: list[dict[str, Any]], cand: _Candidates) -> bool:
        plan: list[tuple[dict[str, Any], dict[str, Any], int, int]] = []  # unfiltered instance reads
        for doc in series:
            sej = series_json(doc)
            if not _ok(self.filters["series"], sej):
                continue
            if self.level == "series":
                if not self._take({**sj, **sej}):
                    return False
                continue
            if not self.filters["instance"] and cand.instances is None:
                count = doc.get("num_instances", 0)
                if self.skip >= count:
                    self.skip -= count
                    continue
                take = min(count - self.skip, self.need)
                plan.append((sej, doc, self.skip, take))
                self.skip = 0
                self.out.extend([{}] * take)  # placeholders, filled below
                if self.need <= 0:
                    break
                continue
            await self._flush(sj, plan)
            plan = []
            if not await self.walk_instances(sj, sej, doc, cand):
                return False
        await self._flush(sj, plan)
        return self.need > 0

    async def _flush(self, sj: dict[str, Any], plan: list[tuple[dict[str, Any], dict[str, Any], int, int]]) -> None:
        """Read planned slices of whole series at once and fill their placeholders."""
        if not plan:
            return
        start = len(self.out) - sum(p[3] for p in plan)
        pages = await gather([self.docs.find("instances-by-series-order",
                                    {"doctype": "instance", "state": "stored", "series": doc["series"],
                                     "o": {"$gt": None}}, fields=_INSTANCE_FIELDS, skip=skip, limit=take)
                               for _, doc, skip, take in plan])
        items: list[dict[str, Any]] = []
        for (sej, _, _, _), rows in zip(plan, pages, strict=True):
            url = sej[RETRIEVE_URL]["Value"][0]
            items.extend({**sj, **sej, **instance_json(r, url)} for r in rows)
        # Counts are read from aggregates; if a series held fewer rows than
        # counted (a write in flight), the page is just shorter.
        self.out[start:] = items

    async def walk_instances(self, sj: dict[str, Any], sej: dict[str, Any], doc: dict[str, Any],
                             cand: _Candidates) -> bool:
        """Instances of one series in order, checked; only candidates if known."""
        bounds: dict[str, Any] = {}
        wanted: set[str] | None = None
        if cand.instances is not None:
            mine = {uid: [o.order for o in group if o.series == doc["series"] and o.order]
                    for uid, group in cand.instances.items()}
            orders = sorted(o for found in mine.values() for o in found)
            if not orders:
                return True
            wanted = {uid for uid, found in mine.items() if found}
            bounds = {"$lte": orders[-1]}
            low: dict[str, Any] = {"$gte": orders[0]}
        else:
            low = {"$gt": None}
        url = sej[RETRIEVE_URL]["Value"][0]
        while True:
            selector = {"doctype": "instance", "state": "stored", "series": doc["series"], "o": {**low, **bounds}}
            rows = await self.docs.find("instances-by-series-order", selector, fields=_INSTANCE_FIELDS, limit=1000)
            for row in rows:
                if wanted is not None and row["sop"] not in wanted:
                    continue
                ij = instance_json(row, url)
                if not _ok(self.filters["instance"], ij):
                    continue
                if not self._take({**sj, **sej, **ij}):
                    return False
            if len(rows) < 1000:
                return True
            low = {"$gt": rows[-1]["o"]}

    async def _merge_metadata(self, results: list[dict[str, Any]], tags: set[str]) -> None:
        """Instance attributes kept only in the stored metadata (includefield)."""
        by_uid = {item[SOP_UID]["Value"][0]: item for item in results}
        docs = await self.docs.get_docs("i:" + s for s in by_uid)
        for doc in docs.values():
            if doc.get("sop") not in by_uid:  # deleted or rejected since it was found
                continue
            metadata = json.loads(doc.get("meta") or "{}")
            by_uid[doc["sop"]].update({tag: metadata[tag] for tag in tags if tag in metadata})


async def search(docs: CouchDocs, query: Query) -> list[dict[str, Any]]:
    """DICOM JSON answers for ``query`` (RetrieveURLs relative to the service root)."""
    return await _Search(docs, query).run()


async def forget_instances(docs: CouchDocs, removed: Sequence[dict[str, Any]]) -> None:
    """Remove the key documents of instances that just left search and
    retrieval (deleted or rejected), given their documents as they were
    before the change. Idempotent, and harmless after a restore (a new STOW
    writes keys of a new generation). Crash repair passes the documents as
    they are now: a deleted stub no longer names its generation, so its keys
    stay as stale keys, which searches re-check and ignore."""
    await sync_keys(docs, [(instance_key_docs(d), []) for d in removed if d.get("att") and d.get("sop") and d.get("study")])
