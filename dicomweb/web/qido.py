"""QIDO-RS glue between HTTP and the pure query model.

Reads the raw query string (``request.args`` is already decoded by
twisted.web and has lost the order of the parameters and the difference
between ``,`` and ``%2C``), parses it with :func:`~dicomweb.dicom.query.parse_query`
and finishes the store's answers: absolute RetrieveURL / BulkDataURI,
required attributes present (empty when unknown), Warning header texts.
"""

from __future__ import annotations

from functools import cache
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from ..dicom.query import (
    DEFAULT_MAX_LIMIT,
    LEVELS,
    PATIENT,
    PATIENT_COUNTS,
    REQUIRED,
    RETRIEVE_URL,
    SERIES_UID,
    STUDY_UID,
    Level,
    Query,
    QueryError,
    parse_query,
    resolve,
)
from .errors import bad_request

_MAX_QUERY_STRING = 64 * 1024
#: VR of the required tags (those the store computes have no dictionary doubt).
_REQUIRED_VRS = {"00080061": "CS", "00080062": "UI", "00081190": "UR", "00201206": "IS",
                 "00201208": "IS", "00201209": "IS", **dict.fromkeys(PATIENT_COUNTS, "IS")}


def query_pairs(uri: bytes) -> list[tuple[str, str]]:
    """Decoded (name, value) pairs of a request URI, in order, repeats kept.

    ``+`` is a space and ``%XX`` a UTF-8 byte, as ``requests`` and
    dicomweb_client encode them (so ``%2C`` is a comma and ``%2B`` a plus).
    Date/time values never contain spaces, so there a ``+`` that reached us
    as a space was a literal plus (a DT offset typed by hand) and is put back.
    """
    raw = uri.partition(b"?")[2]
    if len(raw) > _MAX_QUERY_STRING:
        raise bad_request("query string too long")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise bad_request("the query string must be percent-encoded") from None
    pairs = []
    for item in text.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        try:
            pairs.append((_decode(name), _fix_plus(_decode(name), _decode(value))))
        except UnicodeDecodeError:
            raise bad_request("the query string is not valid percent-encoded UTF-8") from None
    return pairs


def _decode(text: str) -> str:
    return unquote_plus(text, encoding="utf-8", errors="strict")


def _fix_plus(name: str, value: str) -> str:
    if " " not in value:
        return value
    try:
        vr = resolve(name).vr
    except QueryError:
        return value  # not an attribute (a control parameter) or unknown: parse_query says so
    return value.replace(" ", "+") if vr in ("DT", "TM", "DA") else value


def parse(uri: bytes, level: Level, study: str | None = None, series: str | None = None,
          max_limit: int = DEFAULT_MAX_LIMIT) -> Query:
    """The Query of one QIDO request; HTTPError 400 with the reason if bad."""
    scope = {STUDY_UID: study} if study else {}
    if series:
        scope[SERIES_UID] = series
    try:
        return parse_query(level, query_pairs(uri), scope, max_limit=max_limit)
    except QueryError as exc:
        raise bad_request(exc.reason) from None


def finish(results: list[dict[str, Any]], query: Query, base_url: str) -> list[dict[str, Any]]:
    """Absolute URLs and every required attribute of each answer."""
    required = _required_tags(query)
    out = []
    for item in results:
        url = item.get(RETRIEVE_URL, {}).get("Value")
        if url:
            item[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base_url}/{url[0]}"]}
        for element in item.values():
            if isinstance(element, dict) and "BulkDataURI" in element:
                element["BulkDataURI"] = f"{base_url}/{element['BulkDataURI']}"
        missing = [tag for tag in required if tag not in item]
        if missing:
            # PS3.18 10.6.3.3: required attributes are returned, empty if unknown.
            item.update({tag: {"vr": _vr(tag)} for tag in missing})
            item = dict(sorted(item.items()))  # stores answer in tag order; keep it
        out.append(item)
    return out


def _required_tags(query: Query) -> set[str]:
    tags = set(REQUIRED[query.level])
    if query.level == PATIENT:
        return tags
    rank = LEVELS.index(query.level)
    if rank > 0 and STUDY_UID not in query.scope:
        tags |= set(REQUIRED["study"])
    if rank > 1 and SERIES_UID not in query.scope:
        tags |= set(REQUIRED["series"])
    return tags


@cache
def _vr(tag: str) -> str:
    if tag in _REQUIRED_VRS:
        return _REQUIRED_VRS[tag]
    return resolve(tag).vr


def warning_headers(query: Query, base_url: str) -> list[bytes]:
    """``Warning: 299 {host}: "text"`` values for the query.

    The form of PS3.18's examples; with the host name alone before the colon
    it is also a valid RFC 7234 warn-agent (a host with an empty port).
    """
    host = urlsplit(base_url).hostname or "dicomweb"
    return [f'299 {host}: "{_quoted(text)}"'.encode() for text in query.warnings()]


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
