"""QIDO-RS query model: parameters -> :class:`Query`, matching rules, return keys.

Pure code (no Twisted). Each store translates a :class:`Query` into its own
index queries; :func:`matches` is the executable specification those
translations are tested against.

The contract with stores, in short:

* At store time, for every path in :data:`MATCHABLE` of a level, a store
  indexes ``stored_keys(vr, elements)`` (normalised strings, any number per
  attribute) and, for PN, ``fuzzy_words``; :func:`index_entries` does both.
* The patient level (:data:`PATIENT_MATCHABLE`) is indexed the same way on
  each patient's attributes, under :func:`key_path` (``patient/`` + path).
* At query time each :class:`Filter` is tested against those keys only:
  ``single`` -> some key == values[0]; ``list`` -> some key in values;
  ``wildcard`` -> some key matches the pattern (``like_pattern``,
  ``glob_pattern`` or ``regex_pattern``, all escaped here); ``range`` -> some key
  within [low, high] (either may be None = open), compared as plain strings;
  ``fuzzy`` -> every value is a prefix of some fuzzy word; ``universal`` -> no
  condition. An attribute without a value matches only ``universal``.

Client text never reaches a store unescaped: values are validated against
their VR, normalised, and wildcard patterns are handed out pre-escaped.
Error reasons name the attribute but never repeat the client's value (PHI).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cache, lru_cache
from typing import Any, Literal, cast

from pydicom.datadict import get_entry, keyword_dict

from . import levels
from .personname import (
    fuzzy_match,
    fuzzy_words,
    pn_groups,
    pn_index_keys,
    query_words,
)
from .uids import is_valid_uid

Level = Literal["patient", "study", "series", "instance"]
Kind = Literal["single", "list", "wildcard", "range", "universal", "fuzzy"]
#: The study hierarchy: each level answers with its parents' attributes.
#: The patient level stands apart (see :data:`PATIENT_MATCHABLE`).
LEVELS: tuple[Level, ...] = ("study", "series", "instance")
PATIENT: Level = "patient"
_RANK = {level: i for i, level in enumerate(LEVELS)}

DEFAULT_MAX_LIMIT = 10_000
#: Query parameters the web layer consumes itself (PS3.18 8.3.3); ignored here.
PASSTHROUGH = frozenset({"accept", "charset"})
MAX_UIDS_IN_LIST = 1000

STUDY_UID, SERIES_UID = "0020000D", "0020000E"
MODALITIES_IN_STUDY = "00080061"
RETRIEVE_URL = "00081190"
#: NumberOfPatientRelatedStudies / -Series / -Instances (PS3.4 C.3.2 / C.6.1.1.2).
PATIENT_COUNTS = ("00201200", "00201202", "00201204")
#: Match keys of the patient level are indexed under their path with this
#: prefix, apart from the study level keys of the same attributes.
PATIENT_KEY_PREFIX = "patient/"


class QueryError(ValueError):
    """A bad query (HTTP 400). ``reason`` is short and free of client values."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------
# Attribute tables

#: Required return attributes per level (PS3.18 10.6.3.3, Tables 10.6.3-3/4/5),
#: plus the parent UIDs that viewers need at every level.
REQUIRED: dict[Level, tuple[str, ...]] = {
    # Patient level (no PS3.18 resource; the PS3.4 C.6.1.1.2 patient keys).
    "patient": ("00100010", "00100020", "00100021", "00100030", "00100040", *PATIENT_COUNTS),
    "study": (
        "00080020", "00080030", "00080050", "00080061", "00080062", "00080090",
        "00081190", "00100010", "00100020", "00100030", "00100040", "0020000D",
        "00200010", "00201206", "00201208",
    ),
    "series": (
        "00080060", "0008103E", "00081190", "0020000D", "0020000E", "00200011",
        "00201209", "00400244", "00400245",
    ),
    "instance": (
        "00080016", "00080018", "00081190", "0020000D", "0020000E", "00200013",
        "00280008", "00280010", "00280011", "00280100",
    ),
}

_MATCHABLE_KEYWORDS: dict[Level, tuple[str, ...]] = {
    "study": (
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
        "ReferringPhysicianName", "PatientName", "PatientID", "IssuerOfPatientID",
        "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "StudyDescription", "NameOfPhysiciansReadingStudy", "RequestingPhysician",
        "OtherPatientIDs",
        "IssuerOfAccessionNumberSequence.LocalNamespaceEntityID",
        "ProcedureCodeSequence.CodeValue",
    ),
    "series": (
        "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
        "SeriesDate", "SeriesTime", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "BodyPartExamined", "InstitutionName",
        "InstitutionalDepartmentName", "StationName", "Manufacturer",
        "ManufacturerModelName", "ProtocolName", "Laterality",
        "PerformingPhysicianName",
        "RequestAttributesSequence.RequestedProcedureID",
        "RequestAttributesSequence.ScheduledProcedureStepID",
    ),
    "instance": (
        "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
        "BitsAllocated", "NumberOfFrames", "AcquisitionDate", "AcquisitionTime",
        "ContentDate", "ContentTime", "AcquisitionNumber", "ImageType",
        "CompletionFlag", "VerificationFlag", "ConceptNameCodeSequence.CodeValue",
    ),
}


#: Matching keys of the patient level (PS3.4 C.6.1.1.2): the Patient module
#: attributes the store keeps with each study. Their values at the patient
#: level come from one study of the patient (README "Patients").
_PATIENT_MATCHABLE_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientBirthTime",
    "PatientSex", "OtherPatientIDs", "OtherPatientNames", "EthnicGroup",
)


@dataclass(frozen=True)
class Attribute:
    path: str  # "00100010" or "00400275.00401001"
    keyword: str  # "PatientName" or "RequestAttributesSequence.RequestedProcedureID"
    vr: str  # VR of the last element of the path


def _entry_vr(tag: int) -> str:
    vr = str(get_entry(tag)[0])
    return vr.split(" or ")[0]  # "US or SS" -> "US": ambiguous VRs are never matched


def _resolve_part(part: str) -> tuple[str, str, str]:
    """(tag, keyword, vr) of one path element given by keyword or 8-hex tag."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", part):
        tag = int(part, 16)
        try:
            vr = _entry_vr(tag)
            keyword = _keyword_of(tag)
        except KeyError:
            if not tag >> 16 & 1:
                raise QueryError(f"unknown attribute tag {part.upper()}") from None
            vr, keyword = "UN", ""  # private tags: returned, never matched
        return f"{tag:08X}", keyword, vr
    found = keyword_dict.get(part)
    if found is None:
        found = _keywords_lower().get(part.lower())
    if found is None:
        raise QueryError(f"unknown attribute or parameter {_safe_name(part)}")
    return f"{found:08X}", _keyword_of(found), _entry_vr(found)


@cache
def _keywords_lower() -> dict[str, int]:
    # Keywords are matched case-insensitively: "patientname" is not ambiguous.
    return {k.lower(): t for k, t in keyword_dict.items()}


def _keyword_of(tag: int) -> str:
    return str(get_entry(tag)[4])


def _safe_name(name: str) -> str:
    """A parameter name fit for an error message: short and harmless, or nothing."""
    if re.fullmatch(r"[A-Za-z0-9_.]{1,64}", name):
        return name
    return "(not shown)"


@lru_cache(maxsize=1024)
def resolve(name: str) -> Attribute:
    """Resolve ``PatientName``, ``00100010`` or a dotted sequence path.

    Cached: clients name the same few attributes in every query, and the
    dictionary lookups behind an answer cost more than the rest of a parse.
    (An unknown name raises, and is not cached.)
    """
    parts = name.split(".")
    if len(parts) > 4 or not all(parts):
        raise QueryError(f"malformed attribute path {_safe_name(name)}")
    resolved = [_resolve_part(p) for p in parts]
    for tag, keyword, vr in resolved[:-1]:
        if vr != "SQ":
            raise QueryError(f"{keyword or tag} is not a sequence")
    return Attribute(
        path=".".join(r[0] for r in resolved),
        keyword=".".join(r[1] or r[0] for r in resolved),
        vr=resolved[-1][2],
    )


@dataclass(frozen=True)
class Matchable:
    keyword: str
    vr: str
    level: Level


def _build_matchable() -> dict[str, Matchable]:
    table: dict[str, Matchable] = {}
    for level, keywords in _MATCHABLE_KEYWORDS.items():
        for keyword in keywords:
            attr = resolve(keyword)
            table[attr.path] = Matchable(attr.keyword, attr.vr, level)
    return table


#: Every attribute (path) a store must be able to match, with its VR and level.
#: ModalitiesInStudy is matched against the Modality of the study's series.
MATCHABLE: dict[str, Matchable] = _build_matchable()


def _build_patient_matchable() -> dict[str, Matchable]:
    attrs = [resolve(keyword) for keyword in _PATIENT_MATCHABLE_KEYWORDS]
    return {a.path: Matchable(a.keyword, a.vr, "patient") for a in attrs}


#: The attributes matchable at the patient level (the same paths as study
#: level ones, so kept in their own table).
PATIENT_MATCHABLE: dict[str, Matchable] = _build_patient_matchable()


def matchable_at(level: Level) -> dict[str, Matchable]:
    """Path -> entry of the attributes matched on ``level``'s own data."""
    if level == PATIENT:
        return PATIENT_MATCHABLE
    return {path: entry for path, entry in MATCHABLE.items() if entry.level == level}


def key_path(level: Level, path: str) -> str:
    """The path under which a store indexes the keys of ``path`` on ``level``."""
    return PATIENT_KEY_PREFIX + path if level == PATIENT else path


_LEVEL_TAGS: dict[Level, tuple[str, ...]] = {
    "patient": levels.PATIENT_TAGS,
    "study": levels.STUDY_TAGS,
    "series": levels.SERIES_TAGS,
    "instance": levels.INSTANCE_TAGS,
}


# --------------------------------------------------------------------------
# Filters and the query


_WILDCARD_RE = re.compile(r"[*?]")


@dataclass(frozen=True)
class Filter:
    """One matching condition on one attribute (see the module docstring).

    ``values`` by kind: single ``(key,)``; list ``(key, ...)``; wildcard
    ``(pattern,)`` where every ``*`` and ``?`` is a wildcard (the query
    language has no escape for them); range ``(low | None, high | None)``,
    inclusive; fuzzy ``(word, ...)``; universal ``()``.
    """

    tag: str
    vr: str
    kind: Kind
    values: tuple[str | None, ...]
    level: Level
    keyword: str = ""

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.tag.split("."))

    @property
    def key_path(self) -> str:
        """Where a store indexes this filter's keys (see :func:`key_path`)."""
        return key_path(self.level, self.tag)

    def _pattern(self) -> str:
        if self.kind != "wildcard":
            raise ValueError("not a wildcard filter")
        return cast(str, self.values[0])

    def like_pattern(self) -> str:
        """SQL LIKE pattern; use with ``ESCAPE '\\'`` and case-sensitive LIKE.

        (SQLite's LIKE folds ASCII case unless ``PRAGMA case_sensitive_like``;
        keys are already case-normalised where matching is case-insensitive.)
        """
        return wildcard_to_like(self._pattern())

    def glob_pattern(self) -> str:
        """SQLite GLOB pattern (case-sensitive; uses an index on its literal prefix)."""
        return wildcard_to_glob(self._pattern())

    def regex_pattern(self) -> str:
        """Anchored regular expression valid in Python, JavaScript and PCRE."""
        return wildcard_to_regex(self._pattern())

    def literal_prefix(self) -> str:
        """The text before the first wildcard, for an index range scan."""
        return _WILDCARD_RE.split(self._pattern(), maxsplit=1)[0]

    def prefix_regexes(self) -> tuple[str, ...]:
        """For fuzzy filters: one anchored prefix regex per word."""
        return tuple("^" + escape_regex(cast(str, w)) for w in self.values)


@dataclass(frozen=True)
class Query:
    level: Level
    filters: tuple[Filter, ...] = ()
    #: Tags (8 hex, upper case) asked for with includefield or as universal keys.
    includefields: tuple[str, ...] = ()
    include_all: bool = False
    limit: int = DEFAULT_MAX_LIMIT
    offset: int = 0
    #: The client asked for more than the maximum: add a Warning header.
    limit_capped: bool = False
    fuzzy: bool = False
    #: Keywords of matching keys the server ignored (Warning header, PS3.18 8.3.4).
    unsupported: tuple[str, ...] = ()
    scope: Mapping[str, str] = field(default_factory=dict)

    def filters_at(self, level: Level) -> tuple[Filter, ...]:
        return tuple(f for f in self.filters if f.level == level and f.kind != "universal")

    def return_tags(self) -> tuple[str, ...]:
        """Sorted tags to return: required, parents', includefield, matching keys."""
        tags = set(REQUIRED[self.level]) | set(self.includefields)
        if self.level == PATIENT:
            if self.include_all:
                tags |= set(_LEVEL_TAGS[PATIENT])
            tags |= {f.path[0] for f in self.filters}
            return tuple(sorted(tags))
        if self.level != "study" and STUDY_UID not in self.scope:
            tags |= set(REQUIRED["study"])
        if self.level == "instance" and SERIES_UID not in self.scope:
            tags |= set(REQUIRED["series"])
        if self.include_all:
            for level in LEVELS[: _RANK[self.level] + 1]:
                tags |= set(REQUIRED[level]) | set(_LEVEL_TAGS[level])
        tags |= {f.path[0] for f in self.filters}
        return tuple(sorted(tags))

    def warnings(self) -> list[str]:
        """Texts for ``Warning: 299 {host}: "<text>"`` headers (no client values)."""
        out = []
        if self.unsupported:
            names = ", ".join(self.unsupported)
            out.append(f"The following matching keys are not supported and were ignored: {names}")
        if self.limit_capped:
            out.append(f"limit reduced to the server maximum of {self.limit}")
        return out


def parse_query(
    level: Level,
    params: Sequence[tuple[str, str]],
    scope: Mapping[str, str] | None = None,
    *,
    max_limit: int = DEFAULT_MAX_LIMIT,
    passthrough: frozenset[str] = PASSTHROUGH,
) -> Query:
    """Parse decoded QIDO query pairs for ``level``; raise QueryError if bad.

    The patient level takes the matching keys of :data:`PATIENT_MATCHABLE`
    and no ``scope``."""
    if level not in _RANK and not (level == PATIENT and not scope):
        raise ValueError(f"unknown level {level!r} (or a scope at the patient level)")
    controls, keys = _split_params(params, passthrough)
    fuzzy = _parse_bool("fuzzymatching", controls.get("fuzzymatching"))
    limit, capped = _parse_limit(controls.get("limit"), max_limit)
    offset = _parse_int("offset", controls.get("offset")) or 0
    includes, include_all = _parse_includefields(controls.get("includefield", []))
    filters: list[Filter] = list(_scope_filters(scope or {}))
    unsupported: list[str] = []
    seen: set[str] = set()
    for name, value in keys:
        attr = resolve(name)
        if attr.path in seen:
            raise QueryError(f"{attr.keyword} is given more than once")
        seen.add(attr.path)
        entry = _matchable_entry(level, attr.path)
        if entry is not None:
            filters.append(build_filter(attr.path, entry.vr, entry.level, value, fuzzy, entry.keyword))
        elif value.strip() in ("", "*"):
            includes.append(attr.path.split(".")[0])  # a universal key just asks for the value
        else:
            unsupported.append(attr.keyword)
    return Query(
        level=level, filters=tuple(filters), includefields=tuple(dict.fromkeys(includes)),
        include_all=include_all, limit=limit, offset=offset, limit_capped=capped,
        fuzzy=fuzzy, unsupported=tuple(unsupported), scope=dict(scope or {}),
    )


def _matchable_entry(level: Level, path: str) -> Matchable | None:
    """The entry of ``path`` if it can be matched in a ``level`` query
    (its own level's attributes or a parent level's)."""
    if level == PATIENT:
        return PATIENT_MATCHABLE.get(path)
    entry = MATCHABLE.get(path)
    if entry is None or _RANK[entry.level] > _RANK[level]:
        return None
    return entry


_CONTROLS = ("includefield", "limit", "offset", "fuzzymatching")


def _split_params(params: Sequence[tuple[str, str]], passthrough: frozenset[str]
                  ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Separate control parameters (case-insensitive names) from attribute keys."""
    controls: dict[str, Any] = {"includefield": []}
    keys: list[tuple[str, str]] = []
    for name, value in params:
        lower = name.lower()
        if lower in passthrough:
            continue
        if lower == "includefield":
            controls["includefield"].append(value)
        elif lower in _CONTROLS:
            if lower in controls:
                raise QueryError(f"{lower} is given more than once")
            controls[lower] = value
        else:
            keys.append((name, value))
    return controls, keys


def _parse_bool(name: str, value: str | None) -> bool:
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise QueryError(f"{name} must be true or false")
    return lowered == "true"


def _parse_int(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,18}", value.strip()):
        raise QueryError(f"{name} must be a non-negative integer")
    return int(value)


def _parse_limit(value: str | None, max_limit: int) -> tuple[int, bool]:
    """limit=0 or no limit means the server maximum (as Orthanc does)."""
    limit = _parse_int("limit", value)
    if not limit:
        return max_limit, False
    return min(limit, max_limit), limit > max_limit


def _parse_includefields(values: list[str]) -> tuple[list[str], bool]:
    tags: list[str] = []
    include_all = False
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item.lower() == "all":
                include_all = True
            elif item:
                tags.append(resolve(item).path.split(".")[0])
    return tags, include_all


def _scope_filters(scope: Mapping[str, str]) -> Iterable[Filter]:
    """The UIDs fixed by the URL path become single value filters."""
    for tag, uid in scope.items():
        if tag not in (STUDY_UID, SERIES_UID):
            raise ValueError(f"unexpected scope tag {tag}")
        if not is_valid_uid(uid):
            raise QueryError("the UID in the path is not a valid UID")
        level: Level = "study" if tag == STUDY_UID else "series"
        yield Filter(tag, "UI", "single", (uid,), level, MATCHABLE[tag].keyword)


# --------------------------------------------------------------------------
# Values: validation and normalisation per VR

#: Maximum value length per VR (PS3.5 6.2); PN: per component group.
MAX_LENGTH = {
    "AE": 16, "AS": 4, "CS": 16, "DS": 16, "IS": 12, "LO": 64, "LT": 10240,
    "PN": 64, "SH": 16, "ST": 1024, "UC": 1024, "UR": 1024, "UT": 1024, "UI": 64,
}
DATE_VRS = frozenset({"DA", "TM", "DT"})
INT_VRS = frozenset({"IS", "SL", "SS", "SV", "UL", "US", "UV"})
FLOAT_VRS = frozenset({"DS", "FL", "FD"})
#: VRs whose values may not contain a backslash, so it separates values.
_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
_CS_RE = re.compile(r"[A-Z0-9 _*?]*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def build_filter(tag: str, vr: str, level: Level, value: str, fuzzy: bool = False,
                 keyword: str = "") -> Filter:
    """The filter for one matching key; ``value`` as received (decoded)."""
    name = keyword or tag
    text = value.strip()
    if _CONTROL_RE.search(text):
        raise QueryError(f"{name}: control characters are not allowed")
    if text == "" or text.strip("*") == "":
        return Filter(tag, vr, "universal", (), level, keyword)
    kind, values = _values_for(name, vr, text, fuzzy)
    return Filter(tag, vr, kind, values, level, keyword)


def _values_for(name: str, vr: str, text: str, fuzzy: bool) -> tuple[Kind, tuple[str | None, ...]]:
    if vr == "UI":
        return _uid_values(name, text)
    if vr in DATE_VRS:
        if "*" in text or "?" in text or "\\" in text:
            raise QueryError(f"{name}: wildcards and lists are not allowed for dates and times")
        return "range", parse_range(name, vr, text)
    if vr in INT_VRS or vr in FLOAT_VRS:
        return _numeric_values(name, vr, text)
    if vr == "PN":
        return _pn_values(name, text, fuzzy)
    if vr in MAX_LENGTH:
        return _text_values(name, vr, text)
    raise QueryError(f"{name}: matching is not supported for VR {vr}")


def _uid_values(name: str, text: str) -> tuple[Kind, tuple[str | None, ...]]:
    # UID list matching (PS3.18 8.3.4.1): "," is the standard, "\" what OHIF sends.
    uids = tuple(dict.fromkeys(u.strip() for u in re.split(r"[,\\]", text)))
    if len(uids) > MAX_UIDS_IN_LIST:
        raise QueryError(f"{name}: more than {MAX_UIDS_IN_LIST} UIDs")
    if not all(is_valid_uid(u) for u in uids):
        raise QueryError(f"{name}: not a valid UID or UID list")
    return ("single" if len(uids) == 1 else "list"), uids


def _numeric_values(name: str, vr: str, text: str) -> tuple[Kind, tuple[str | None, ...]]:
    items = [i.strip() for i in text.split("\\")]
    try:
        keys = tuple(dict.fromkeys(_number_key(vr, i) for i in items))
    except ValueError:
        raise QueryError(f"{name}: not a valid {vr} value") from None
    return ("single" if len(keys) == 1 else "list"), keys


def _number_key(vr: str, value: object) -> str:
    """Canonical text of a number: ``'007'`` and ``7`` both give ``'7'``."""
    text = str(value).strip()
    if vr in INT_VRS:
        if not re.fullmatch(r"[+-]?[0-9]{1,20}", text):
            raise ValueError(text)
        return str(int(text))
    if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?", text):
        raise ValueError(text)
    return repr(float(text))


def _check_length(name: str, vr: str, text: str) -> None:
    # Wildcards are not part of the value: "*" + a full-length prefix is fine.
    if len(text.replace("*", "")) > MAX_LENGTH[vr]:
        raise QueryError(f"{name}: value longer than {MAX_LENGTH[vr]} characters ({vr})")


def _text_values(name: str, vr: str, text: str) -> tuple[Kind, tuple[str | None, ...]]:
    items = [text] if vr in _TEXT_VRS else [i.strip() for i in text.split("\\")]
    for item in items:
        _check_length(name, vr, item)
        if vr == "CS" and not _CS_RE.fullmatch(item):
            raise QueryError(f"{name}: not a valid CS value (upper case letters, digits, space, _)")
    return _kind_of(name, items)


def _kind_of(name: str, items: list[str]) -> tuple[Kind, tuple[str | None, ...]]:
    wild = any("*" in i or "?" in i for i in items)
    if len(items) > 1:
        if wild or not all(items):
            raise QueryError(f"{name}: a value list cannot have empty values or wildcards")
        return "list", tuple(dict.fromkeys(items))
    if wild:
        return "wildcard", (re.sub(r"\*+", "*", items[0]),)
    return "single", (items[0],)


def _pn_values(name: str, text: str, fuzzy: bool) -> tuple[Kind, tuple[str | None, ...]]:
    items = [i.strip() for i in text.split("\\")]
    for item in items:
        groups = item.split("=")
        if len(groups) > 3:
            raise QueryError(f"{name}: a person name has at most three component groups")
        for group in groups:
            _check_length(name, "PN", group)
    if len(items) > 1:
        if any("=" in i for i in items):
            raise QueryError(f"{name}: a name list cannot use component groups (=)")
        return _kind_of(name, [pn_groups(i)[0] for i in items])
    wild = "*" in text or "?" in text
    if fuzzy and not wild:
        words = query_words(text)
        return ("fuzzy", words) if words else ("universal", ())
    if "=" not in text:
        return _kind_of(name, [pn_groups(text)[0]])
    # Groups named: match the full key "A=I=P"; an empty group matches anything.
    groups = pn_groups(text)
    if not any(groups):
        return "universal", ()
    pattern = "=".join(g or "*" for g in groups)
    return _kind_of(name, [pattern])


# Dates and times. Keys are fixed width so that string order is time order:
#   DA "YYYYMMDD", TM "HHMMSS.ffffff", DT "YYYYMMDDHHMMSS.ffffff" (offset dropped).

_DA_RE = re.compile(r"([0-9]{4})\.?([0-9]{2})\.?([0-9]{2})")
_TM_RE = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:\.([0-9]{1,6}))?)?)?")
#: ACR-NEMA times "HH:MM[:SS[.f]]", still written by old modalities.
_TM_OLD_RE = re.compile(r"([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?")
_DT_RE = re.compile(
    r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})"
    r"(?:\.([0-9]{1,6}))?)?)?)?)?)?([+-][0-9]{4})?"
)


def _date_key(text: str) -> str:
    """``YYYYMMDD`` (the old ``YYYY.MM.DD`` is read too); ValueError if not a date."""
    m = _DA_RE.fullmatch(text)
    if not m or (text.count(".") not in (0, 2)):
        raise ValueError("not a date")
    year, month, day = (int(g) for g in m.groups())
    date(year, month, day)
    return "".join(m.groups())


def _time_parts(text: str) -> list[str | None]:
    m = _TM_RE.fullmatch(text) or _TM_OLD_RE.fullmatch(text)
    if not m:
        raise ValueError("not a time")
    hh, mm, ss, frac = m.groups()
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        raise ValueError("not a time")
    return [hh, mm, ss, frac]


def _time_key(parts: list[str | None], high: bool) -> str:
    hh, mm, ss, frac = parts
    fill = "59" if high else "00"
    if frac is None:
        frac = "999999" if high else "000000"
    else:
        frac = frac.ljust(6, "9" if high else "0")
    return f"{hh}{mm or fill}{ss or fill}.{frac}"


def _datetime_key(text: str, high: bool) -> str:
    m = _DT_RE.fullmatch(text)
    if not m:
        raise ValueError("not a datetime")
    year, month, day, hh, mm, ss, frac, offset = m.groups()
    _check_datetime(year, month, day, hh, mm, ss, offset)
    if high:
        pads = ["12", "31", "23", "59", "59"]
    else:
        pads = ["01", "01", "00", "00", "00"]
    fields = [v or p for v, p in zip((month, day, hh, mm, ss), pads, strict=True)]
    frac = (frac or "").ljust(6, "9" if high else "0")
    return f"{year}{''.join(fields)}.{frac}"


def _check_datetime(year: str, month: str | None, day: str | None, hh: str | None,
                    mm: str | None, ss: str | None, offset: str | None) -> None:
    if month and not 1 <= int(month) <= 12:
        raise ValueError("month")
    if month and day and not 1 <= int(day) <= calendar.monthrange(int(year), int(month))[1]:
        raise ValueError("day")
    if (hh and int(hh) > 23) or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        raise ValueError("time")
    if offset and (int(offset[1:3]) > 14 or int(offset[3:]) > 59):
        raise ValueError("offset")


def _bounds(vr: str, text: str) -> tuple[str, str]:
    """(low, high) keys of the interval one date/time value covers."""
    if vr == "DA":
        key = _date_key(text)
        return key, key
    if vr == "TM":
        parts = _time_parts(text)
        return _time_key(parts, False), _time_key(parts, True)
    return _datetime_key(text, False), _datetime_key(text, True)


def _split_range(vr: str, text: str) -> tuple[str, str] | None:
    """The two ends of ``A-B``, or None for a single value."""
    if vr != "DT":
        if "-" not in text:
            return None
        low, _, high = text.partition("-")
        if "-" in high:
            raise ValueError("too many dashes")
        return low, high
    # DT offsets contain "-" too: a valid single value wins, then a unique split.
    if _DT_RE.fullmatch(text) and _valid(vr, text):
        return None
    splits = [(text[:i], text[i + 1:]) for i, c in enumerate(text) if c == "-"]
    valid = [(a, b) for a, b in splits if (not a or _valid(vr, a)) and (not b or _valid(vr, b))]
    if len(valid) != 1:
        raise ValueError("ambiguous or malformed range")
    return valid[0]


def _valid(vr: str, text: str) -> bool:
    try:
        _bounds(vr, text)
    except ValueError:
        return False
    return True


def parse_range(name: str, vr: str, text: str) -> tuple[str | None, str | None]:
    """Range matching (PS3.4 C.2.2.2.5) for DA, TM, DT -> inclusive (low, high) keys.

    A single value is the interval it covers: TM ``10`` is 10:00:00.000000 to
    10:59:59.999999, DT ``2020`` the whole year, DA one day. DT offsets are
    dropped (times compare as written).
    """
    try:
        ends = _split_range(vr, text)
        if ends is None:
            return _bounds(vr, text)
        low = _bounds(vr, ends[0])[0] if ends[0] else None
        high = _bounds(vr, ends[1])[1] if ends[1] else None
    except ValueError:
        raise QueryError(f"{name}: not a valid {vr} value or range") from None
    if low is None and high is None:
        raise QueryError(f"{name}: a range needs at least one end")
    if low is not None and high is not None and low > high:
        raise QueryError(f"{name}: the range ends before it starts")
    return low, high


# --------------------------------------------------------------------------
# Patterns, escaped for each query language

_REGEX_SPECIAL = frozenset("^$\\.*+?()[]{}|/")


def escape_regex(text: str) -> str:
    """Escape only the syntax characters shared by Python, JavaScript and PCRE.

    Escaping anything else (``\\=``) is an error in JavaScript's unicode mode.
    """
    return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in text)


def wildcard_to_regex(pattern: str) -> str:
    # [\s\S] rather than "." so that no engine's newline rule matters.
    parts = {"*": r"[\s\S]*", "?": r"[\s\S]"}
    return "^" + "".join(parts.get(c) or escape_regex(c) for c in pattern) + "$"


def wildcard_to_like(pattern: str) -> str:
    """LIKE pattern for ``... LIKE ? ESCAPE '\\'``."""
    parts = {"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}
    return "".join(parts.get(c, c) for c in pattern)


def wildcard_to_glob(pattern: str) -> str:
    # GLOB has no escape character: a literal special character becomes a class.
    if "[" not in pattern and "]" not in pattern:
        return pattern  # the usual case, without a pass per character
    parts = {"[": "[[]", "]": "[]]"}
    return "".join(parts.get(c, c) for c in pattern)


# --------------------------------------------------------------------------
# Stored side: keys a store indexes, and the reference matcher


def stored_keys(vr: str, elements: Iterable[Mapping[str, Any]]) -> list[str]:
    """Normalised match keys of DICOM JSON elements (one attribute, all values).

    Values that cannot be normalised (a malformed stored date) are left out:
    they match only universal matching.
    """
    keys: list[str] = []
    for element in elements:
        raw = element.get("Value") or []
        if vr == "PN":
            keys.extend(pn_index_keys(v for v in raw if isinstance(v, (str, Mapping))))
            continue
        for value in raw:
            key = _stored_key(vr, value)
            if key is not None and key not in keys:
                keys.append(key)
    return keys


def _stored_key(vr: str, value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip(" \t\r\n\x00")  # NUL: padding some writers use
    try:
        if vr == "DA":
            return _date_key(text)
        if vr == "TM":
            return _time_key(_time_parts(text), False)
        if vr == "DT":
            return _datetime_key(text, False)
        if vr in INT_VRS or vr in FLOAT_VRS:
            return _number_key(vr, value)
    except ValueError:
        return None
    return text or None


def stored_fuzzy_words(elements: Iterable[Mapping[str, Any]]) -> list[str]:
    """Fuzzy words of PN elements (see :func:`personname.fuzzy_words`)."""
    values: list[Any] = []
    for element in elements:
        values.extend(v for v in element.get("Value") or [] if isinstance(v, (str, Mapping)))
    return fuzzy_words(values)


def find_elements(doc: Mapping[str, Any], path: str) -> list[Mapping[str, Any]]:
    """The elements at a dotted path, across every item of each sequence."""
    current: list[Mapping[str, Any]] = [doc]
    parts = path.split(".")
    for i, tag in enumerate(parts):
        found = [d[tag] for d in current if isinstance(d.get(tag), Mapping)]
        if i == len(parts) - 1:
            return found
        current = [item for e in found for item in e.get("Value") or [] if isinstance(item, Mapping)]
    return []


def index_entries(level: Level, doc: Mapping[str, Any]) -> dict[str, list[str]]:
    """What a store indexes for one level's attributes: path -> keys.

    PN attributes also get ``path + "/fuzzy"`` -> fuzzy words. For the study
    level, ``doc`` should carry the ModalitiesInStudy aggregate (00080061).
    Patient level paths carry :data:`PATIENT_KEY_PREFIX` (:func:`key_path`).
    """
    entries: dict[str, list[str]] = {}
    for path, entry in matchable_at(level).items():
        elements = find_elements(doc, path)
        keys = stored_keys(entry.vr, elements)
        stored = key_path(level, path)
        if keys:
            entries[stored] = keys
        if entry.vr == "PN" and keys:
            entries[stored + "/fuzzy"] = stored_fuzzy_words(elements)
    return entries


def filter_matches(flt: Filter, doc: Mapping[str, Any]) -> bool:
    """Whether one level's DICOM JSON satisfies one filter."""
    if flt.kind == "universal":
        return True
    elements = find_elements(doc, flt.tag)
    if flt.kind == "fuzzy":
        return fuzzy_match(cast(tuple[str, ...], flt.values), stored_fuzzy_words(elements))
    keys = stored_keys(flt.vr, elements)
    if flt.kind == "single":
        return flt.values[0] in keys
    if flt.kind == "list":
        return any(k in flt.values for k in keys)
    if flt.kind == "wildcard":
        regex = re.compile(flt.regex_pattern())
        return any(regex.fullmatch(k) for k in keys)
    low, high = flt.values
    return any((low is None or low <= k) and (high is None or k <= high) for k in keys)


def matches(query: Query, study: Mapping[str, Any] | None, series: Mapping[str, Any] | None = None,
            instance: Mapping[str, Any] | None = None, patient: Mapping[str, Any] | None = None) -> bool:
    """Reference matcher over DICOM JSON of each level (the executable spec).

    ``study`` must include the ModalitiesInStudy aggregate (00080061) when the
    query filters on it. A patient level query is matched on ``patient``
    (the patient's attributes, :func:`~dicomweb.dicom.levels.patient_attrs`).
    """
    docs = {"study": study, "series": series, "instance": instance, "patient": patient}
    for flt in query.filters:
        if flt.kind == "universal":
            continue
        doc = docs[flt.level]
        if doc is None:
            raise ValueError(f"matches() needs the {flt.level} attributes")
        if not filter_matches(flt, doc):
            return False
    return True


def project(query: Query, combined: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes of one result to return, in tag order (includefield=all: all)."""
    if query.include_all:
        return {tag: combined[tag] for tag in sorted(combined)}
    return {tag: combined[tag] for tag in query.return_tags() if tag in combined}


def apply_includefields(query: Query, combined: Mapping[str, Any]) -> dict[str, Any]:
    """Alias of :func:`project`."""
    return project(query, combined)

