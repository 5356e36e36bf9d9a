"""The patient level of the query model (pure code): parsing, return keys,
index keys and the reference matcher (README "Patients")."""

from __future__ import annotations

from typing import Any

import pytest

from dicomweb.dicom import levels
from dicomweb.dicom.query import (
    PATIENT_KEY_PREFIX,
    QueryError,
    index_entries,
    matches,
    parse_query,
    project,
)


def _patient(name: str = "Smith^John", pid: str = "P1", birth: str = "19600102", sex: str = "M") -> dict[str, Any]:
    study = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
        "00100020": {"vr": "LO", "Value": [pid]},
        "00100030": {"vr": "DA", "Value": [birth]},
        "00100040": {"vr": "CS", "Value": [sex]},
        "00080020": {"vr": "DA", "Value": ["20200101"]},  # a study attribute: not the patient's
    }
    return levels.patient_attrs(study)


def _match(params: list[tuple[str, str]], patient: dict[str, Any]) -> bool:
    return matches(parse_query("patient", params), None, patient=patient)


def test_patient_attrs_keep_only_the_patient_module() -> None:
    attrs = _patient()
    assert "00080020" not in attrs
    assert list(attrs) == ["00100010", "00100020", "00100030", "00100040"]


def test_identity_is_id_and_issuer_padding_stripped() -> None:
    assert levels.patient_identity({"00100020": {"vr": "LO", "Value": ["P1 "]}}) == ("P1", "")
    assert levels.patient_identity({"00100020": {"vr": "LO", "Value": ["P1"]},
                                    "00100021": {"vr": "LO", "Value": ["HOSP"]}}) == ("P1", "HOSP")
    assert levels.patient_identity({}) == ("", "")


@pytest.mark.parametrize(("params", "expected"), [
    ([("PatientID", "P1")], True),
    ([("PatientID", "P2")], False),
    ([("00100020", "P*")], True),
    ([("PatientName", "smith*")], True),  # PN wildcards are case-insensitive
    ([("PatientName", "SMITH^JOHN")], True),
    ([("PatientName", "Jones*")], False),
    ([("PatientName", "joh"), ("fuzzymatching", "true")], True),
    ([("PatientBirthDate", "19600101-19601231")], True),
    ([("PatientBirthDate", "-19591231")], False),
    ([("PatientSex", "M")], True),
    ([("PatientSex", "F")], False),
    ([("PatientSex", "")], True),  # universal
    ([("IssuerOfPatientID", "HOSP")], False),  # no issuer: matches only universal
])
def test_matching_rules(params: list[tuple[str, str]], expected: bool) -> None:
    assert _match(params, _patient()) is expected


def test_return_keys_counts_and_includefield() -> None:
    query = parse_query("patient", [("includefield", "PatientComments")])
    tags = query.return_tags()
    assert set(levels.PATIENT_COUNT_TAGS) <= set(tags)
    assert "00104000" in tags and "0020000D" not in tags and "00081190" not in tags
    answer = levels.patient_json(_patient(), 2, 3, 7)
    projected = project(query, answer)
    assert projected["00201200"] == {"vr": "IS", "Value": [2]}
    assert projected["00201202"] == {"vr": "IS", "Value": [3]}
    assert projected["00201204"] == {"vr": "IS", "Value": [7]}
    everything = parse_query("patient", [("includefield", "all")]).return_tags()
    assert set(levels.PATIENT_TAGS) <= set(everything)


def test_study_keys_are_ignored_with_a_warning_and_paging_is_qidos() -> None:
    query = parse_query("patient", [("StudyDate", "2020"), ("limit", "20000"), ("offset", "3")], max_limit=100)
    assert not query.filters and query.unsupported == ("StudyDate",)
    assert (query.limit, query.offset, query.limit_capped) == (100, 3, True)
    assert len(query.warnings()) == 2


@pytest.mark.parametrize("params", [
    [("PatientBirthDate", "2020-13-01")],
    [("PatientBirthDate", "1960*")],
    [("PatientSex", "m")],
    [("limit", "-1")],
    [("NoSuchKeyword", "x")],
])
def test_bad_values_are_query_errors(params: list[tuple[str, str]]) -> None:
    with pytest.raises(QueryError):
        parse_query("patient", params)


def test_no_scope_at_the_patient_level() -> None:
    with pytest.raises(ValueError):
        parse_query("patient", [], scope={"0020000D": "1.2.3"})


def test_index_keys_are_kept_apart_from_the_study_keys() -> None:
    entries = index_entries("patient", _patient())
    assert set(entries) == {PATIENT_KEY_PREFIX + p for p in
                            ("00100010", "00100010/fuzzy", "00100020", "00100030", "00100040")}
    study_entries = index_entries("study", _patient())
    assert not any(p.startswith(PATIENT_KEY_PREFIX) for p in study_entries)
    query = parse_query("patient", [("PatientName", "smi*")])
    assert query.filters[0].key_path == PATIENT_KEY_PREFIX + "00100010"
