"""Table-driven tests of QIDO parameter parsing (dicomweb.dicom.query.parse_query)."""

from __future__ import annotations

from typing import Any

import pytest

from dicomweb.dicom import levels
from dicomweb.dicom.query import (
    DEFAULT_MAX_LIMIT,
    MATCHABLE,
    PATIENT_MATCHABLE,
    REQUIRED,
    Filter,
    Level,
    Query,
    QueryError,
    build_filter,
    parse_query,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"


def only_filter(level: Level, name: str, value: str, **kw: Any) -> Filter:
    query = parse_query(level, [(name, value)], **kw)
    assert len(query.filters) == 1
    return query.filters[0]


# --- keys ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["PatientID", "00100020", "00100020".lower(), "patientid"])
def test_key_by_keyword_or_tag(name: str) -> None:
    flt = only_filter("study", name, "P1")
    assert (flt.tag, flt.vr, flt.kind, flt.values, flt.level) == ("00100020", "LO", "single", ("P1",), "study")


@pytest.mark.parametrize("name", ["00400275.00401001", "RequestAttributesSequence.RequestedProcedureID",
                                  "00400275.RequestedProcedureID"])
def test_sequence_path(name: str) -> None:
    flt = only_filter("series", name, "RP1")
    assert (flt.tag, flt.vr, flt.kind, flt.level) == ("00400275.00401001", "SH", "single", "series")


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("PatientNam", "x", "unknown attribute"),
    ("foo", "x", "unknown attribute or parameter foo"),
    ("00100011", "x", "unknown attribute tag 00100011"),
    ("PatientName.PatientID", "x", "PatientName is not a sequence"),
    ("00400275..00401001", "x", "malformed attribute path"),
    ("Patient Name<script>", "x", "(not shown)"),
])
def test_unknown_keys(name: str, value: str, reason: str) -> None:
    with pytest.raises(QueryError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_query("study", [(name, value)])


def test_repeated_key_is_an_error() -> None:
    with pytest.raises(QueryError, match="more than once"):
        parse_query("study", [("PatientID", "a"), ("00100020", "b")])


@pytest.mark.parametrize(("level", "params", "unsupported"), [
    ("study", [("Modality", "CT")], ("Modality",)),  # series key at study level
    ("study", [("00091010", "x")], ("00091010",)),  # private tag
    ("series", [("PatientComments", "x")], ("PatientComments",)),  # not indexed
    ("study", [("IssuerOfAccessionNumberSequence.UniversalEntityID", "x")],
     ("IssuerOfAccessionNumberSequence.UniversalEntityID",)),
])
def test_unsupported_keys_are_reported_not_refused(level: Level, params: list[tuple[str, str]],
                                                   unsupported: tuple[str, ...]) -> None:
    query = parse_query(level, params)
    assert query.unsupported == unsupported
    assert query.filters == ()
    assert unsupported[0] in query.warnings()[0]


def test_unsupported_key_without_value_is_just_returned() -> None:
    query = parse_query("study", [("PatientComments", ""), ("Modality", "")])
    assert query.unsupported == ()
    assert {"00104000", "00080060"} <= set(query.return_tags())


def test_passthrough_parameters_are_ignored() -> None:
    assert parse_query("study", [("accept", "application/dicom+json"), ("charset", "utf-8")]).filters == ()


# --- control parameters --------------------------------------------------

@pytest.mark.parametrize(("params", "tags", "include_all"), [
    ([("includefield", "00081030,00080060")], ["00081030", "00080060"], False),
    ([("includefield", "StudyDescription"), ("includefield", "0008103e")], ["00081030", "0008103E"], False),
    ([("includefield", "00081030, 00080060,")], ["00081030", "00080060"], False),
    ([("includefield", "all")], [], True),
    ([("includefield", "ALL,00081030")], ["00081030"], True),
    ([("includefield", "00400275.00401001")], ["00400275"], False),
    ([("includefield", "")], [], False),
])
def test_includefield(params: list[tuple[str, str]], tags: list[str], include_all: bool) -> None:
    query = parse_query("study", params)
    assert list(query.includefields) == tags
    assert query.include_all is include_all


def test_includefield_unknown_keyword() -> None:
    with pytest.raises(QueryError, match="unknown attribute"):
        parse_query("study", [("includefield", "StudyDescriptionn")])


@pytest.mark.parametrize(("params", "limit", "offset", "capped"), [
    ([], DEFAULT_MAX_LIMIT, 0, False),
    ([("limit", "101"), ("offset", "0")], 101, 0, False),
    ([("limit", "0")], DEFAULT_MAX_LIMIT, 0, False),
    ([("limit", "10001")], DEFAULT_MAX_LIMIT, 0, True),
    ([("limit", "999999999999999999"), ("offset", "20")], DEFAULT_MAX_LIMIT, 20, True),
    ([("LIMIT", "5")], 5, 0, False),
])
def test_limit_offset(params: list[tuple[str, str]], limit: int, offset: int, capped: bool) -> None:
    query = parse_query("study", params)
    assert (query.limit, query.offset, query.limit_capped) == (limit, offset, capped)
    assert bool(query.warnings()) is capped


def test_limit_cap_is_configurable() -> None:
    query = parse_query("study", [("limit", "500")], max_limit=100)
    assert (query.limit, query.limit_capped) == (100, True)


@pytest.mark.parametrize("params", [
    [("limit", "-1")], [("limit", "ten")], [("offset", "1.5")], [("offset", "")],
    [("limit", "1"), ("limit", "2")], [("limit", "1" * 19)], [("fuzzymatching", "yes")],
    [("fuzzymatching", "true"), ("fuzzymatching", "true")],
])
def test_bad_control_parameters(params: list[tuple[str, str]]) -> None:
    with pytest.raises(QueryError):
        parse_query("study", params)


@pytest.mark.parametrize(("value", "fuzzy"), [("true", True), ("TRUE", True), ("false", False)])
def test_fuzzymatching_flag(value: str, fuzzy: bool) -> None:
    assert parse_query("study", [("fuzzymatching", value)]).fuzzy is fuzzy


def test_fuzzymatching_applies_whatever_the_parameter_order() -> None:
    query = parse_query("study", [("PatientName", "hans mül"), ("fuzzymatching", "true")])
    assert query.filters[0].kind == "fuzzy"
    assert query.filters[0].values == ("HANS", "MUL")


# --- matching types and value normalisation ---------------------------------

@pytest.mark.parametrize(("name", "value", "kind", "values"), [
    # universal
    ("PatientID", "", "universal", ()),
    ("PatientID", "*", "universal", ()),
    ("PatientName", "**", "universal", ()),
    ("StudyDate", "", "universal", ()),
    # single, trailing/leading padding insignificant
    ("PatientID", " P1 ", "single", ("P1",)),
    ("AccessionNumber", "A 1", "single", ("A 1",)),
    # UID lists, both separators, duplicates removed
    ("StudyInstanceUID", "1.2.3", "single", ("1.2.3",)),
    ("StudyInstanceUID", "1.2.3,1.2.4", "list", ("1.2.3", "1.2.4")),
    ("StudyInstanceUID", "1.2.3\\1.2.4", "list", ("1.2.3", "1.2.4")),
    ("StudyInstanceUID", "1.2.3, 1.2.4\\1.2.3", "list", ("1.2.3", "1.2.4")),
    # wildcards: case-sensitive for non-PN VRs, "**" collapsed
    ("StudyDescription", "*Brain**", "wildcard", ("*Brain*",)),
    ("AccessionNumber", "A?1", "wildcard", ("A?1",)),
    ("ModalitiesInStudy", "C*", "wildcard", ("C*",)),
    # value lists (VM > 1) for VRs where "\" separates values
    ("ModalitiesInStudy", "CT\\MR", "list", ("CT", "MR")),
    # PN: case- and accent-insensitive keys
    ("PatientName", "müller^hans", "single", ("MULLER^HANS",)),
    ("PatientName", "Müller^Hans^^^", "single", ("MULLER^HANS",)),
    ("PatientName", "mül*", "wildcard", ("MUL*",)),
    ("PatientName", "Müller^Hans=ミュラー^ハンス", "wildcard", ("MULLER^HANS=ミュラー^ハンス=*",)),
    ("PatientName", "=ミュラー^ハンス", "wildcard", ("*=ミュラー^ハンス=*",)),
    ("PatientName", "Yamada^Taro=山田^太郎=やまだ^たろう", "single", ("YAMADA^TARO=山田^太郎=やまだ^たろう",)),
    ("PatientName", "ブラウン", "single", ("ブラウン",)),
    ("PatientName", "==", "universal", ()),
    ("PatientName", "Doe\\Roe", "list", ("DOE", "ROE")),
    # dates and times are always ranges of fixed-width keys
    ("StudyDate", "20200101", "range", ("20200101", "20200101")),
    ("StudyDate", "2020.01.01", "range", ("20200101", "20200101")),
    ("StudyDate", "20191215-20200115", "range", ("20191215", "20200115")),
    ("StudyDate", "20200101-", "range", ("20200101", None)),
    ("StudyDate", "-20200101", "range", (None, "20200101")),
    ("StudyDate", "20200229", "range", ("20200229", "20200229")),
    ("StudyTime", "10", "range", ("100000.000000", "105959.999999")),
    ("StudyTime", "1030", "range", ("103000.000000", "103059.999999")),
    ("StudyTime", "103015.5", "range", ("103015.500000", "103015.599999")),
    ("StudyTime", "10:30", "range", ("103000.000000", "103059.999999")),
    ("StudyTime", "0800-1200", "range", ("080000.000000", "120059.999999")),
    ("StudyTime", "-0759", "range", (None, "075959.999999")),
    # numbers: canonical text
    ("00200011", "007", "single", ("7",)),
    ("InstanceNumber", "+3", "single", ("3",)),
    ("Rows", "512\\256", "list", ("512", "256")),
])
def test_values(name: str, value: str, kind: str, values: tuple[str | None, ...]) -> None:
    flt = only_filter("instance", name, value)
    assert (flt.kind, flt.values) == (kind, values)


@pytest.mark.parametrize(("value", "values"), [
    ("2020", ("20200101000000.000000", "20201231235959.999999")),
    ("202002", ("20200201000000.000000", "20200231235959.999999")),  # "31": string order suffices
    ("20200101120000-0500", ("20200101120000.000000", "20200101120000.999999")),
    ("2019-2021", ("20190101000000.000000", "20211231235959.999999")),
    ("20200101-0500-20210101+0100", ("20200101000000.000000", "20210101235959.999999")),
    ("20200101103000.25-", ("20200101103000.250000", None)),
    ("-2020", (None, "20201231235959.999999")),
])
def test_datetime_ranges(value: str, values: tuple[str | None, ...]) -> None:
    flt = build_filter("0008002A", "DT", "instance", value)
    assert (flt.kind, flt.values) == ("range", values)


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("StudyDate", "20200230", "not a valid DA"),
    ("StudyDate", "2020", "not a valid DA"),
    ("StudyDate", "20201301", "not a valid DA"),
    ("StudyDate", "2020-01-01", "not a valid DA"),
    ("StudyDate", "-", "at least one end"),
    ("StudyDate", "20201231-20200101", "ends before it starts"),
    ("StudyDate", "2020*", "wildcards"),
    ("StudyDate", "20200101\\20200102", "lists"),
    ("StudyTime", "2400", "not a valid TM"),
    ("StudyTime", "1060", "not a valid TM"),
    ("StudyTime", "10.5", "not a valid TM"),
    ("StudyInstanceUID", "1.2..3", "not a valid UID"),
    ("StudyInstanceUID", "1.2.*", "not a valid UID"),
    ("StudyInstanceUID", "1.2.3,,1.2.4", "not a valid UID"),
    ("StudyInstanceUID", "1." + "2" * 63, "not a valid UID"),
    ("ModalitiesInStudy", "ct", "not a valid CS"),
    ("ModalitiesInStudy", "CT\\*", "cannot have empty values or wildcards"),
    ("ModalitiesInStudy", "CT\\", "cannot have empty values or wildcards"),
    ("PatientSex", "ABCDEFGHIJKLMNOPQ", "longer than 16"),
    ("AccessionNumber", "A" * 17, "longer than 16"),
    ("PatientID", "P" * 65, "longer than 64"),
    ("PatientName", "N" * 65, "longer than 64"),
    ("PatientName", "A=B=C=D", "three component groups"),
    ("PatientName", "A=B\\C", "cannot use component groups"),
    ("PatientID", "P\x001", "control characters"),
    ("InstanceNumber", "seven", "not a valid IS"),
    ("Rows", "1*", "not a valid US"),
])
def test_bad_values(name: str, value: str, reason: str) -> None:
    with pytest.raises(QueryError, match=reason):
        parse_query("instance", [(name, value)])


def test_length_limits_do_not_count_wildcards() -> None:
    assert only_filter("study", "PatientID", "*" + "P" * 64 + "*").kind == "wildcard"
    pn = "N" * 64 + "=" + "ミ" * 64
    assert only_filter("study", "PatientName", pn).kind == "wildcard"


SECRET = "SECRETSMITH"


@pytest.mark.parametrize(("name", "value"), [
    ("PatientName", SECRET * 10), ("PatientID", SECRET * 10), ("StudyDate", SECRET),
    ("StudyInstanceUID", SECRET), ("limit", SECRET), ("fuzzymatching", SECRET),
    ("ModalitiesInStudy", SECRET.lower()), ("InstanceNumber", SECRET), (SECRET + "!", "x"),
])
def test_reasons_never_echo_values(name: str, value: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_query("instance", [(name, value)])
    assert SECRET not in info.value.reason
    assert SECRET not in str(info.value)


# --- scope and return keys --------------------------------------------------

def test_scope_becomes_filters() -> None:
    query = parse_query("instance", [], {"0020000D": STUDY, "0020000E": SERIES})
    assert [(f.tag, f.kind, f.values, f.level) for f in query.filters] == [
        ("0020000D", "single", (STUDY,), "study"), ("0020000E", "single", (SERIES,), "series")]


def test_bad_scope_uid() -> None:
    with pytest.raises(QueryError, match="path"):
        parse_query("series", [], {"0020000D": "1.2.x"})


def test_return_tags_per_level_and_scope() -> None:
    study_tags = set(REQUIRED["study"])
    series_tags = set(REQUIRED["series"])
    instance_tags = set(REQUIRED["instance"])
    assert set(parse_query("study", []).return_tags()) == study_tags
    assert set(parse_query("series", []).return_tags()) == study_tags | series_tags
    assert set(parse_query("series", [], {"0020000D": STUDY}).return_tags()) == series_tags
    assert set(parse_query("instance", []).return_tags()) == study_tags | series_tags | instance_tags
    in_study = set(parse_query("instance", [], {"0020000D": STUDY}).return_tags())
    assert in_study == series_tags | instance_tags
    in_series = set(parse_query("instance", [], {"0020000D": STUDY, "0020000E": SERIES}).return_tags())
    assert in_series == instance_tags  # includes both parent UIDs
    assert {"0020000D", "0020000E"} <= in_series


def test_return_tags_include_matching_keys_and_includefields() -> None:
    query = parse_query("series", [("StudyDescription", "*CT*"), ("BodyPartExamined", ""),
                                   ("00400275.00401001", "RP1"), ("includefield", "00080021")],
                        {"0020000D": STUDY})
    tags = query.return_tags()
    assert {"00081030", "00180015", "00400275", "00080021"} <= set(tags)
    assert list(tags) == sorted(tags)


def test_include_all_returns_every_level_attribute() -> None:
    tags = set(parse_query("series", [("includefield", "all")]).return_tags())
    assert set(levels.STUDY_TAGS) | set(levels.SERIES_TAGS) <= tags
    assert not set(levels.INSTANCE_TAGS) & tags


def test_matchable_covers_required_keys_and_is_stored() -> None:
    """Every required (non-computed) key is matchable, and every matchable key
    is among the attributes levels.py keeps for its level."""
    computed = {"00081190", "00201206", "00201208", "00201209", "00080062", "00080061", *levels.PATIENT_COUNT_TAGS}
    kept = {"study": levels.STUDY_TAGS, "series": levels.SERIES_TAGS, "instance": levels.INSTANCE_TAGS}
    for level, tags in REQUIRED.items():
        for tag in set(tags) - computed:
            assert tag in (PATIENT_MATCHABLE if level == "patient" else MATCHABLE), tag
    for path, entry in MATCHABLE.items():
        if path != "00080061":
            assert path.split(".")[0] in kept[entry.level], (path, entry)
    # Patient attributes are kept with each study.
    assert set(PATIENT_MATCHABLE) <= set(levels.PATIENT_TAGS) <= set(levels.STUDY_TAGS)


def test_filters_at() -> None:
    query = parse_query("study", [("PatientID", "P1")])
    assert isinstance(query, Query)
    assert query.filters_at("study") == query.filters
    assert query.filters_at("series") == ()
