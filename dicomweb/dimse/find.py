"""C-FIND SCP (PS3.4 C.4.1): the identifier becomes the same
:class:`~dicomweb.dicom.query.Query` a QIDO-RS request would, and the store's
``search`` answers it, so matching (wildcards, ranges, UID lists, person
name rules), indexes and limits are QIDO's.

Levels: PATIENT (Patient Root model only, PS3.4 C.6.1), STUDY, SERIES and
IMAGE in the Patient Root and Study Root models; the PATIENT level is the
store's patient index, the one ``GET /patients`` answers from, with exact
Number of Patient Related Studies / Series / Instances.  Each answer carries exactly the
keys of the identifier (PS3.4 C.4.1.1.3.2), in UTF-8 (Specific Character
Set ``ISO_IR 192``); C-CANCEL is checked before each pending response.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from twisted.logger import Logger

from ..dicom.query import DEFAULT_MAX_LIMIT, Level, Query, QueryError, parse_query
from ..store import StoreUnavailable
from .bridge import Bridge, Stopping
from .identity import Gate
from .storage import NOT_AUTHORIZED, OUT_OF_RESOURCES, status

log = Logger()

#: QueryRetrieveLevel -> QIDO level (PS3.4 C.6.1.1 / C.6.2.1).
LEVELS: dict[str, Level] = {"PATIENT": "patient", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
#: The Study Root models (FIND, MOVE, GET) have no PATIENT level (PS3.4 C.6.2).
STUDY_ROOT = frozenset({"1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.5.1.4.1.2.2.2", "1.2.840.10008.5.1.4.1.2.2.3"})
#: PS3.4 Table C.4-1: "Identifier does not match SOP Class" and "Unable to process".
DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
PENDING, CANCEL = 0xFF00, 0xFE00

_QR_LEVEL = Tag(0x0008, 0x0052)
_CHARSET = Tag(0x0008, 0x0005)
_RETRIEVE_AE = Tag(0x0008, 0x0054)
_AVAILABILITY = Tag(0x0008, 0x0056)


class FindError(Exception):
    """A C-FIND that cannot be answered: a DIMSE status and a short comment
    (never the identifier's values)."""

    def __init__(self, code: int, comment: str) -> None:
        super().__init__(comment)
        self.code, self.comment = code, comment


def query_level(identifier: Dataset, model: str | None = None) -> tuple[str, Level]:
    """(QueryRetrieveLevel, query level); FindError for a level the
    information model ``model`` (an abstract syntax UID) does not have."""
    text = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if text not in LEVELS:
        raise FindError(DOES_NOT_MATCH, "QueryRetrieveLevel must be PATIENT, STUDY, SERIES or IMAGE")
    if text == "PATIENT" and model in STUDY_ROOT:
        raise FindError(DOES_NOT_MATCH, "the Study Root model has no PATIENT level")
    return text, LEVELS[text]


def model_of(event: Any) -> str | None:
    """The abstract syntax of the request's presentation context."""
    context = getattr(event, "context", None)
    return str(getattr(context, "abstract_syntax", "") or "") or None


def _text(elem: DataElement) -> str:
    """An element's value as QIDO query text (multiple values joined by ``\\``)."""
    value = elem.value
    if value is None or value == "":
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value)


def identifier_pairs(identifier: Dataset) -> list[tuple[str, str]]:
    """(8-hex tag or dotted path, value) pairs of the matching and return keys.

    Reading an element decodes it with the identifier's Specific Character
    Set (pydicom), so names arrive as Unicode text like QIDO's UTF-8."""
    pairs: list[tuple[str, str]] = []
    for elem in identifier:
        tag = elem.tag
        if tag in (_QR_LEVEL, _CHARSET, _RETRIEVE_AE, _AVAILABILITY) or tag.group == 0x0002 or tag.is_private:
            continue
        key = f"{tag:08X}"
        if elem.VR == "SQ":
            pairs.append((key, ""))
            for item in elem.value or []:
                pairs.extend((f"{key}.{sub.tag:08X}", _text(sub)) for sub in item
                             if sub.VR != "SQ" and _text(sub))
                break  # PS3.4 C.2.2.2.6: one item
            continue
        pairs.append((key, _text(elem)))
    return pairs


def build_query(identifier: Dataset, level: Level | None = None, max_limit: int = DEFAULT_MAX_LIMIT,
                model: str | None = None) -> Query:
    """The Query of a C-FIND (or, with ``level``, a retrieve) identifier.
    FindError when it is malformed."""
    _, own_level = query_level(identifier, model)
    try:
        return parse_query(level or own_level, identifier_pairs(identifier), max_limit=max_limit)
    except QueryError as exc:
        raise FindError(UNABLE_TO_PROCESS, exc.reason[:64]) from None
    except (ValueError, TypeError):
        raise FindError(UNABLE_TO_PROCESS, "the identifier cannot be read") from None


def _found(item: dict[str, Any]) -> Dataset:
    """A store answer (DICOM JSON) as a data set; URLs are HTTP-only."""
    kept = {tag: el for tag, el in item.items()
            if isinstance(el, dict) and "BulkDataURI" not in el and el.get("vr") != "UR"}
    return Dataset.from_json(kept)


def answer(item: dict[str, Any], identifier: Dataset, level_text: str, ae_title: str) -> Dataset:
    """The response identifier: the requested keys, with their values."""
    found = _found(item)
    out = Dataset()
    out.SpecificCharacterSet = "ISO_IR 192"
    out.QueryRetrieveLevel = level_text
    for elem in identifier:
        tag = elem.tag
        if tag in (_QR_LEVEL, _CHARSET) or tag.group == 0x0002:
            continue
        if tag == _RETRIEVE_AE:
            out.RetrieveAETitle = ae_title
        elif tag == _AVAILABILITY:
            out.InstanceAvailability = "ONLINE"
        elif tag in found:
            out[tag] = found[tag]
        else:
            out.add_new(tag, elem.VR, None)
    return out


class FindSCP:
    """The ``EVT_C_FIND`` handler (a generator of (status, identifier))."""

    def __init__(self, store: Any, bridge: Bridge, gate: Gate, ae_title: str,
                 max_limit: int = DEFAULT_MAX_LIMIT) -> None:
        self.store, self.bridge, self.gate = store, bridge, gate
        self.ae_title, self.max_limit = ae_title, max_limit

    def __call__(self, event: Any) -> Iterator[tuple[Any, Dataset | None]]:
        principal = self.gate.principal(event.assoc)
        if principal is None:  # reading needs any accepted principal, as over HTTP
            yield status(NOT_AUTHORIZED, "not authorized"), None
            return
        try:
            identifier = event.identifier
            model = model_of(event)
            level_text, _ = query_level(identifier, model)
            query = build_query(identifier, max_limit=self.max_limit, model=model)
            results = self.bridge.call(self.store.search, query)
        except FindError as exc:
            log.info("C-FIND refused: {reason}", reason=exc.comment)
            yield status(exc.code, exc.comment), None
            return
        except (Stopping, StoreUnavailable):
            yield status(OUT_OF_RESOURCES, "the store is unavailable; query again later"), None
            return
        except Exception:
            log.failure("C-FIND failed")
            yield status(UNABLE_TO_PROCESS, "the query failed"), None
            return
        for item in results:
            wait_sent(event.assoc)
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, answer(item, identifier, level_text, self.ae_title)


def wait_sent(assoc: Any, poll: float = 0.0002) -> None:
    """Wait until the responses already queued have left.

    pynetdicom's DUL thread reads an incoming PDU (a C-CANCEL) only in a
    loop pass with nothing queued to send, and answers are produced far
    faster than they are sent: without this pause every answer would be
    queued before a C-CANCEL could be read.  It costs no throughput (the DUL
    sends at its own pace either way)."""
    dul = getattr(assoc, "dul", None)
    queue = getattr(dul, "to_provider_queue", None)
    if queue is None:
        return
    while not queue.empty() and assoc.is_established:
        time.sleep(poll)


__all__ = ["FindError", "FindSCP", "answer", "build_query", "identifier_pairs", "model_of", "query_level"]
