"""Table-driven tests of the reference matcher (dicomweb.dicom.query.matches)."""

from __future__ import annotations

from typing import Any

import pytest

from dicomweb.dicom.query import (
    Query,
    build_filter,
    index_entries,
    matches,
    parse_query,
    project,
)


def el(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def study(uid: str, name: Any, date: str | None, time: str, modalities: list[str], **extra: Any) -> dict[str, Any]:
    doc = {
        "0020000D": el("UI", uid),
        "00100010": el("PN", name if isinstance(name, dict) else {"Alphabetic": name}),
        "00080030": el("TM", time),
        "00080061": el("CS", *modalities),
    }
    if date is not None:
        doc["00080020"] = el("DA", date)
    doc.update(extra)
    return doc


STUDIES = {
    "s1": study("1.2.1", {"Alphabetic": "Müller^Hans", "Ideographic": "ミュラー^ハンス"}, "20191231",
                "235959.5", ["CT", "SR"],
                **{"00081030": el("LO", "Brain CT"), "00100020": el("LO", "P1"),
                   "00080050": el("SH", "A1")}),
    "s2": study("1.2.2", "MULLER^HANNA", "20200101", "000000", ["MR"],
                **{"00081030": el("LO", "brain mr"), "00100020": el("LO", "P2")}),
    "s3": study("1.2.3", "Meyer-Lansky^Anna^^Dr.", "20210615", "1030", ["CT", "PT"],
                **{"00100020": el("LO", "P3"), "00080090": el("PN", {"Alphabetic": "Müller^Hans"})}),
    "s4": study("1.2.4", {"Alphabetic": "Yamada^Taro", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
                "20200229", "10", ["US"], **{"00100020": el("LO", "P_4%")}),
    "s5": study("1.2.5", {"Alphabetic": "Brown^John", "Ideographic": "ブラウン^ジョン"}, None,
                "", ["CT"], **{"00100020": el("LO", "P5")}),
}

CASES: list[tuple[list[tuple[str, str]], set[str]]] = [
    ([], {"s1", "s2", "s3", "s4", "s5"}),
    # single value: exact, after PN normalisation (case and accents)
    ([("PatientName", "Müller^Hans")], {"s1"}),
    ([("PatientName", "muller^hans")], {"s1"}),
    ([("PatientName", "Muller")], set()),  # single value matching is not prefix matching
    ([("PatientName", "ミュラー^ハンス")], {"s1"}),  # any component group
    ([("PatientName", "やまだ^たろう")], {"s4"}),
    ([("PatientName", "ブラウン^ジョン")], {"s5"}),
    ([("PatientName", "フラウン^ジョン")], set()),  # the voicing mark is not an accent
    ([("PatientName", "Meyer-Lansky^Anna^^Dr.")], {"s3"}),
    # component groups named with "="
    ([("PatientName", "Müller^Hans=ミュラー^ハンス")], {"s1"}),
    ([("PatientName", "=ミュラー^ハンス")], {"s1"}),
    ([("PatientName", "Müller^Hans=")], {"s1"}),
    ([("PatientName", "ミュラー^ハンス=")], set()),  # the alphabetic group is not Japanese
    ([("PatientName", "Yamada^Taro=山田^太郎=やまだ^たろう")], {"s4"}),
    # wildcards
    ([("PatientName", "mül*")], {"s1", "s2"}),
    ([("PatientName", "M*")], {"s1", "s2", "s3"}),
    ([("PatientName", "*^HAN?")], {"s1"}),
    ([("PatientName", "*^HAN??")], {"s2"}),
    ([("PatientName", "ミュ*")], {"s1"}),
    ([("PatientName", "*LANSKY*")], {"s3"}),
    ([("StudyDescription", "*rain*")], {"s1", "s2"}),
    ([("StudyDescription", "Brain*")], {"s1"}),  # case-sensitive outside PN
    ([("PatientID", "P_4%")], {"s4"}),  # LIKE metacharacters are literal
    ([("PatientID", "P_*")], {"s4"}),
    ([("PatientID", "P?")], {"s1", "s2", "s3", "s5"}),
    # fuzzy matching: every word a prefix of some name word, any order
    ([("fuzzymatching", "true"), ("PatientName", "hans mül")], {"s1"}),
    ([("fuzzymatching", "true"), ("PatientName", "mul")], {"s1", "s2"}),
    ([("fuzzymatching", "true"), ("PatientName", "lansky")], {"s3"}),
    ([("fuzzymatching", "true"), ("PatientName", "ann")], {"s3"}),
    ([("fuzzymatching", "true"), ("PatientName", "ハンス")], {"s1"}),
    ([("fuzzymatching", "true"), ("PatientName", "taro yamada")], {"s4"}),
    ([("fuzzymatching", "true"), ("PatientName", "hans^x")], set()),
    ([("fuzzymatching", "true"), ("ReferringPhysicianName", "hans")], {"s3"}),
    ([("fuzzymatching", "false"), ("PatientName", "hans")], set()),
    # UID lists, both separators
    ([("StudyInstanceUID", "1.2.1,1.2.3")], {"s1", "s3"}),
    ([("StudyInstanceUID", "1.2.1\\1.2.3\\9.9")], {"s1", "s3"}),
    ([("0020000d", "1.2.4")], {"s4"}),
    # date ranges across years
    ([("StudyDate", "20191215-20200115")], {"s1", "s2"}),
    ([("StudyDate", "20200101-")], {"s2", "s3", "s4"}),
    ([("StudyDate", "-20200101")], {"s1", "s2"}),
    ([("StudyDate", "20200229")], {"s4"}),
    ([("StudyDate", "2019.12.31")], {"s1"}),
    ([("StudyDate", "")], {"s1", "s2", "s3", "s4", "s5"}),  # universal includes no date
    # times: a partial time covers its interval; stored partial times start theirs
    ([("StudyTime", "23")], {"s1"}),
    ([("StudyTime", "10")], {"s3", "s4"}),
    ([("StudyTime", "1030")], {"s3"}),
    ([("StudyTime", "0000-1000")], {"s2", "s4"}),
    ([("StudyTime", "2359-")], {"s1"}),
    ([("StudyTime", "235959.6-")], set()),
    # ModalitiesInStudy: any series modality
    ([("ModalitiesInStudy", "CT")], {"s1", "s3", "s5"}),
    ([("ModalitiesInStudy", "CT\\MR")], {"s1", "s2", "s3", "s5"}),
    ([("ModalitiesInStudy", "?R")], {"s1", "s2"}),
    # combinations are conjunctions
    ([("PatientName", "M*"), ("ModalitiesInStudy", "MR"), ("StudyDate", "20210101-")], set()),
    ([("PatientName", "M*"), ("ModalitiesInStudy", "CT"), ("StudyDate", "20190101-20211231")], {"s1", "s3"}),
]


def _ids(query: Query) -> set[str]:
    return {sid for sid, doc in STUDIES.items() if matches(query, doc)}


@pytest.mark.parametrize(("params", "expected"), CASES)
def test_study_matching(params: list[tuple[str, str]], expected: set[str]) -> None:
    assert _ids(parse_query("study", params)) == expected


SERIES = {
    "a": {"0020000E": el("UI", "1.2.1.1"), "00080060": el("CS", "CT"), "00200011": el("IS", 2),
          "0008103E": el("LO", "Axial 5mm"),
          "00400275": el("SQ", {"00401001": el("SH", "RP1")}, {"00401001": el("SH", "RP2")})},
    "b": {"0020000E": el("UI", "1.2.1.2"), "00080060": el("CS", "SR"), "00200011": el("IS", 10)},
}


@pytest.mark.parametrize(("params", "expected"), [
    ([("Modality", "CT")], {"a"}),
    ([("SeriesNumber", "02")], {"a"}),
    ([("SeriesNumber", "2\\10")], {"a", "b"}),
    ([("00400275.00401001", "RP2")], {"a"}),
    ([("RequestAttributesSequence.RequestedProcedureID", "RP*")], {"a"}),
    ([("SeriesDescription", "*5mm")], {"a"}),
    ([("SeriesInstanceUID", "1.2.1.2,1.2.1.3")], {"b"}),
    ([("ModalitiesInStudy", "SR")], {"a", "b"}),  # the parent study matches
    ([("ModalitiesInStudy", "MR")], set()),
])
def test_series_matching(params: list[tuple[str, str]], expected: set[str]) -> None:
    query = parse_query("series", params, {"0020000D": "1.2.1"})
    assert {k for k, doc in SERIES.items() if matches(query, STUDIES["s1"], doc)} == expected


INSTANCES = {
    "i1": {"00080016": el("UI", "1.2.840.10008.5.1.4.1.1.2"), "00080018": el("UI", "1.2.1.1.1"),
           "00200013": el("IS", "1"), "00080008": el("CS", "ORIGINAL", "PRIMARY", "AXIAL"),
           "00280010": el("US", 512)},
    "i2": {"00080016": el("UI", "1.2.840.10008.5.1.4.1.1.7"), "00080018": el("UI", "1.2.1.1.2"),
           "00200013": el("IS", "2"), "00080008": el("CS", "DERIVED", "SECONDARY"),
           "00280010": el("US", 256)},
}


@pytest.mark.parametrize(("params", "expected"), [
    ([("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2")], {"i1"}),
    ([("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2\\1.2.840.10008.5.1.4.1.1.7")], {"i1", "i2"}),
    ([("InstanceNumber", "2")], {"i2"}),
    ([("ImageType", "AXIAL")], {"i1"}),  # any value of a multi-valued attribute
    ([("ImageType", "*ARY")], {"i1", "i2"}),
    ([("Rows", "512")], {"i1"}),
    ([("PatientName", "Müller*"), ("Modality", "CT"), ("Rows", "256")], {"i2"}),
])
def test_instance_matching(params: list[tuple[str, str]], expected: set[str]) -> None:
    query = parse_query("instance", params)
    found = {k for k, doc in INSTANCES.items() if matches(query, STUDIES["s1"], SERIES["a"], doc)}
    assert found == expected


def test_datetime_matching() -> None:
    doc = {"0008002A": el("DT", "20200101103000.25+0100")}
    query = Query("instance", (build_filter("0008002A", "DT", "instance", "2019-2020"),))
    assert matches(query, {}, {}, doc)
    query = Query("instance", (build_filter("0008002A", "DT", "instance", "20200101103001-"),))
    assert not matches(query, {}, {}, doc)


def test_malformed_stored_values_match_only_universal() -> None:
    doc = study("1.2.9", "X", "2020-01-01", "99", [])
    assert not matches(parse_query("study", [("StudyDate", "19000101-")]), doc)
    assert not matches(parse_query("study", [("StudyTime", "00-")]), doc)
    assert matches(parse_query("study", [("StudyDate", "")]), doc)


def test_matcher_needs_the_levels_it_filters() -> None:
    with pytest.raises(ValueError, match="series"):
        matches(parse_query("series", [("Modality", "CT")]), STUDIES["s1"])


def test_index_entries_are_what_the_matcher_compares() -> None:
    entries = index_entries("study", STUDIES["s1"])
    assert entries["00100010"] == ["MULLER^HANS=ミュラー^ハンス=", "MULLER^HANS", "ミュラー^ハンス"]
    assert entries["00100010/fuzzy"] == ["HANS", "MULLER", "ハンス", "ミュラー"]
    assert entries["00080020"] == ["20191231"]
    assert entries["00080030"] == ["235959.500000"]
    assert entries["00080061"] == ["CT", "SR"]
    series = index_entries("series", SERIES["a"])
    assert series["00400275.00401001"] == ["RP1", "RP2"]
    assert series["00200011"] == ["2"]


def test_project() -> None:
    combined = {**STUDIES["s1"], **SERIES["a"], "00081190": el("UR", "http://x/studies/1.2.1/series/1.2.1.1")}
    query = parse_query("series", [("includefield", "StudyDescription")], {"0020000D": "1.2.1"})
    out = project(query, combined)
    assert list(out) == sorted(out)
    assert "00081030" in out and "00081190" in out and "0020000D" in out
    assert "00100010" not in out  # study attributes only when the study is not in the path
    everything = project(parse_query("series", [("includefield", "all")]), combined)
    assert set(everything) == set(combined)
