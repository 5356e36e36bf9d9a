"""QIDO-RS conformance, table-driven, on the real server of every store.

A generated corpus (four patients with UTF-8 and multi-component names,
studies across years, several modalities per study) is stored once per
session through STOW. Every PatientID carries a marker unique to the run and
every query is scoped by it (``PatientID=Q<run>*``), so data other tests
store cannot interfere; unscoped queries are checked as supersets.
Expected answers are UID sets written from the corpus table below.
Refusals decided before the store is asked (406, 400 with a reason) are
checked in this process (tests/inprocess.py).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dicomweb.dicom.query import REQUIRED
from tests.httpclient import referenced, session, stow
from tests.inprocess import Client

RUN = uuid.uuid4().hex[:8].upper()
SCOPE = ("PatientID", f"Q{RUN}*")
CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
SR = "1.2.840.10008.5.1.4.1.1.88.22"

# Patients: label -> (PatientName, birth date, sex)
PATIENTS = {
    "mueller": ("Müller^Hans=ミュラー^ハンス", "19700101", "M"),
    "doe": ("Doe^John^Quincy", "19851224", "M"),
    "meyer": ("Meyer-Lansky^Anna", "19601010", "F"),
    "celik": ("Çelik^Ayşe", "19990228", "F"),
}


@dataclass(frozen=True)
class StudySpec:
    label: str
    patient: str
    date: str
    time: str
    accession: str
    description: str
    #: series: (label, modality, number, description, sop class, instances)
    series: tuple[tuple[str, str, int, str, str, int], ...]


STUDIES = (
    StudySpec("s1", "mueller", "20191231", "235959", "A1001", "Thorax",
              (("s1ct", "CT", 1, "Axial 1mm", CT, 3), ("s1mr", "MR", 2, "T1 sag", MR, 2))),
    StudySpec("s2", "mueller", "20200101", "000000", "A2002", "Head",
              (("s2ct", "CT", 1, "Head axial", CT, 2),)),
    StudySpec("s3", "doe", "20200615", "101530", "B2003", "Knee",
              (("s3mr", "MR", 3, "PD fat sat", MR, 2), ("s3sr", "SR", 99, "Report", SR, 1))),
    StudySpec("s4", "meyer", "20211111", "080000", "A2104", "Abdomen",
              (("s4ct", "CT", 1, "Portal venous", CT, 2), ("s4mr", "MR", 2, "T2 axial", MR, 1),
               ("s4ct2", "CT", 5, "Arterial", CT, 1))),
    StudySpec("s5", "celik", "20230301", "123000", "C3005", "Spine",
              (("s5mr", "MR", 1, "T2 sag", MR, 3),)),
)


class Corpus:
    """UIDs of everything stored, by label."""

    def __init__(self) -> None:
        self.uid: dict[str, str] = {}
        self.patient_id = {p: f"Q{RUN}-{i}" for i, p in enumerate(PATIENTS)}
        self.instances: dict[str, list[str]] = {}  # series label -> SOP UIDs

    def sops(self, *series_labels: str) -> set[str]:
        return {sop for label in series_labels for sop in self.instances[label]}

    def all_series(self) -> list[str]:
        return [se[0] for st in STUDIES for se in st.series]


def _instance(corpus: Corpus, study: StudySpec, series: tuple[str, str, int, str, str, int], number: int) -> bytes:
    label, modality, series_number, description, sop_class, _ = series
    name, birth, sex = PATIENTS[study.patient]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID, ds.SeriesInstanceUID = corpus.uid[study.label], corpus.uid[label]
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, corpus.patient_id[study.patient], birth, sex
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = study.date, study.time, study.accession
    ds.StudyDescription, ds.StudyID, ds.ReferringPhysicianName = study.description, "1", "Ref^Erin"
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, series_number, description
    ds.InstanceNumber = number
    ds.SliceThickness = "1.5"  # not a level attribute: only in the instance metadata
    if modality != "SR":
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(16)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    corpus.instances.setdefault(label, []).append(ds.SOPInstanceUID)
    return out.getvalue()


@pytest.fixture(scope="session")
def corpus(server: Any) -> Corpus:
    data = Corpus()
    parts = []
    for study in STUDIES:
        data.uid[study.label] = generate_uid()
        for series in study.series:
            data.uid[series[0]] = generate_uid()
            parts += [_instance(data, study, series, n) for n in range(1, series[5] + 1)]
    response = stow(server.url, parts)
    assert response.status_code == 200, response.text
    assert len(referenced(response.json())) == len(parts)
    return data


def _get(target: str | Client, path: str, params: Sequence[tuple[str, str]] | str = (),
         **kwargs: Any) -> requests.Response:
    """GET from a server URL or an in-process client."""
    http, url = session(target)
    if isinstance(params, str):
        response: requests.Response = http.get(f"{url}{path}?{params}", timeout=30, **kwargs)
    else:
        response = http.get(url + path, params=list(params), timeout=30, **kwargs)
    return response


def _found(response: requests.Response, tag: str) -> set[str]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    return {item[tag]["Value"][0] for item in response.json()}


# -- study level: every matching type ----------------------------------------

STUDY_CASES: list[tuple[str, list[tuple[str, str]], set[str]]] = [
    ("universal", [], {"s1", "s2", "s3", "s4", "s5"}),
    ("universal empty value", [("PatientName", "")], {"s1", "s2", "s3", "s4", "s5"}),
    ("PN exact", [("PatientName", "Doe^John^Quincy")], {"s3"}),
    ("PN exact, other case, trailing ^", [("PatientName", "doe^john^quincy^^")], {"s3"}),
    ("PN accent-insensitive", [("PatientName", "Muller^Hans")], {"s1", "s2"}),
    ("PN wildcard UTF-8", [("PatientName", "mül*")], {"s1", "s2"}),
    ("PN wildcard ?", [("PatientName", "?elik*")], {"s5"}),
    ("PN wildcard inner", [("PatientName", "*lansky*")], {"s4"}),
    ("PN ideographic group", [("PatientName", "ミュラー*")], {"s1", "s2"}),
    ("PN all groups", [("PatientName", "Müller^Hans=ミュラー^ハンス")], {"s1", "s2"}),
    ("PN group pattern", [("PatientName", "*=ミュラー^ハンス")], {"s1", "s2"}),
    ("PN no match", [("PatientName", "Smith*")], set()),
    ("hex tag key", [("00100010", "DOE*")], {"s3"}),
    ("keyword any case", [("patientname", "DOE*")], {"s3"}),
    ("fuzzy one word", [("PatientName", "hans"), ("fuzzymatching", "true")], {"s1", "s2"}),
    ("fuzzy prefixes, any order", [("PatientName", "ann mey"), ("fuzzymatching", "true")], {"s4"}),
    ("fuzzy accent-free", [("PatientName", "ayse"), ("fuzzymatching", "true")], {"s5"}),
    ("fuzzy off: no prefix match", [("PatientName", "hans"), ("fuzzymatching", "false")], set()),
    ("date single", [("StudyDate", "20200101")], {"s2"}),
    ("date range A-B", [("StudyDate", "20191231-20200615")], {"s1", "s2", "s3"}),
    ("date range A-", [("StudyDate", "20211111-")], {"s4", "s5"}),
    ("date range -B", [("StudyDate", "-20200101")], {"s1", "s2"}),
    ("date old format", [("StudyDate", "2020.01.01")], {"s2"}),
    ("time range", [("StudyTime", "080000-123000")], {"s3", "s4", "s5"}),
    ("time hour", [("StudyTime", "23")], {"s1"}),
    ("time -B", [("StudyTime", "-0800")], {"s2", "s4"}),
    ("accession wildcard", [("AccessionNumber", "A?0*")], {"s1", "s2"}),
    ("accession list", [("AccessionNumber", "A2002\\C3005")], {"s2", "s5"}),
    ("description single", [("StudyDescription", "Knee")], {"s3"}),
    ("description case-sensitive", [("StudyDescription", "knee")], set()),
    ("modalities in study", [("ModalitiesInStudy", "MR")], {"s1", "s3", "s4", "s5"}),
    ("modalities list", [("ModalitiesInStudy", "SR\\CT")], {"s1", "s2", "s3", "s4"}),
    ("modalities wildcard", [("00080061", "S*")], {"s3"}),
    ("sex", [("PatientSex", "F")], {"s4", "s5"}),
    ("birth date range", [("PatientBirthDate", "19600101-19751231")], {"s1", "s2", "s4"}),
    ("name + date range", [("PatientName", "m*"), ("StudyDate", "20200101-20221231")], {"s2", "s4"}),
    ("three filters", [("PatientName", "*e*"), ("ModalitiesInStudy", "CT"), ("StudyDate", "20200101-")], {"s2", "s4"}),
]


@pytest.mark.parametrize(("name", "params", "expected"), STUDY_CASES, ids=[c[0] for c in STUDY_CASES])
def test_study_matching(url: str, corpus: Corpus, name: str, params: list[tuple[str, str]], expected: set[str]) -> None:
    found = _found(_get(url, "/studies", [SCOPE, *params]), "0020000D")
    assert found == {corpus.uid[s] for s in expected}


def test_patient_id_single_and_list(url: str, corpus: Corpus) -> None:
    ids = corpus.patient_id
    assert _found(_get(url, "/studies", [("PatientID", ids["doe"])]), "0020000D") == {corpus.uid["s3"]}
    both = f"{ids['doe']}\\{ids['celik']}"
    assert _found(_get(url, "/studies", [("00100020", both)]), "0020000D") == {corpus.uid["s3"], corpus.uid["s5"]}


@pytest.mark.parametrize("separator", [",", "\\", "%2C", "%5C"])
def test_study_uid_lists(url: str, corpus: Corpus, separator: str) -> None:
    uids = [corpus.uid["s1"], corpus.uid["s4"], generate_uid()]
    query = "StudyInstanceUID=" + separator.join(uids)
    assert _found(_get(url, "/studies", query), "0020000D") == {corpus.uid["s1"], corpus.uid["s4"]}


def test_percent_encoded_wildcards_as_clients_send_them(url: str, corpus: Corpus) -> None:
    # "*" as %2A, "ü" as UTF-8 bytes, "^" as %5E, a space as "+".
    query = f"PatientID=Q{RUN}%2A&PatientName=m%C3%BCller%5Eh%2A"
    assert _found(_get(url, "/studies", query), "0020000D") == {corpus.uid["s1"], corpus.uid["s2"]}
    query = f"PatientID=Q{RUN}%2A&PatientName=ann+mey&fuzzymatching=true"
    assert _found(_get(url, "/studies", query), "0020000D") == {corpus.uid["s4"]}


def test_unscoped_queries_give_supersets(url: str, corpus: Corpus) -> None:
    every = _found(_get(url, "/studies", []), "0020000D")
    assert {corpus.uid[s.label] for s in STUDIES} <= every
    response = _get(url, "/studies", [("PatientName", "müller*")])
    assert {corpus.uid["s1"], corpus.uid["s2"]} <= _found(response, "0020000D")
    for item in response.json():
        assert item["00100010"]["Value"][0]["Alphabetic"].upper().startswith(("MÜLLER", "MULLER"))
    mr = _get(url, "/studies", [("ModalitiesInStudy", "MR")]).json()
    assert all("MR" in item["00080061"]["Value"] for item in mr)


# -- study level: what is returned --------------------------------------------


def test_study_required_attributes_and_exact_counts(url: str, corpus: Corpus) -> None:
    items = _get(url, "/studies", [SCOPE]).json()
    by_uid = {item["0020000D"]["Value"][0]: item for item in items}
    for study in STUDIES:
        item = by_uid[corpus.uid[study.label]]
        assert set(REQUIRED["study"]) <= set(item)
        assert item["00201206"]["Value"] == [len(study.series)]
        assert item["00201208"]["Value"] == [sum(se[5] for se in study.series)]
        assert sorted(item["00080061"]["Value"]) == sorted({se[1] for se in study.series})
        assert sorted(item["00080062"]["Value"]) == sorted({se[4] for se in study.series})
        assert item["00081190"]["Value"] == [f"{url}/studies/{corpus.uid[study.label]}"]
        assert item["00100020"]["Value"] == [corpus.patient_id[study.patient]]
        assert "00081030" not in item  # StudyDescription only when asked
    assert list(by_uid) == [corpus.uid[s] for s in ("s5", "s4", "s3", "s2", "s1")]  # newest first


@pytest.mark.parametrize("query", [
    "includefield=00081030", "includefield=StudyDescription", "includefield=00081030%2C00100030",
    "includefield=PatientAge&includefield=StudyDescription", "includefield=all", "StudyDescription=",
])
def test_study_includefield(url: str, corpus: Corpus, query: str) -> None:
    items = _get(url, "/studies", f"PatientID={corpus.patient_id['doe']}&{query}").json()
    assert len(items) == 1
    assert items[0]["00081030"]["Value"] == ["Knee"]
    assert "0008103E" not in items[0]  # series attributes are never returned at study level


# -- series level -------------------------------------------------------------

SERIES_CASES: list[tuple[str, list[tuple[str, str]], set[str]]] = [
    ("all", [], {"s1ct", "s1mr", "s2ct", "s3mr", "s3sr", "s4ct", "s4mr", "s4ct2", "s5mr"}),
    ("modality", [("Modality", "MR")], {"s1mr", "s3mr", "s4mr", "s5mr"}),
    ("modality list", [("Modality", "SR\\CT")], {"s1ct", "s2ct", "s3sr", "s4ct", "s4ct2"}),
    ("series number", [("SeriesNumber", "2")], {"s1mr", "s4mr"}),
    ("series number list", [("00200011", "5\\99")], {"s4ct2", "s3sr"}),
    ("description wildcard", [("SeriesDescription", "T? *")], {"s1mr", "s4mr", "s5mr"}),
    ("study filter at series level", [("PatientName", "doe*")], {"s3mr", "s3sr"}),
    ("study date and modality", [("StudyDate", "20200101-"), ("Modality", "CT")], {"s2ct", "s4ct", "s4ct2"}),
    ("modalities in study at series level", [("ModalitiesInStudy", "SR")], {"s3mr", "s3sr"}),
]


@pytest.mark.parametrize(("name", "params", "expected"), SERIES_CASES, ids=[c[0] for c in SERIES_CASES])
def test_series_matching(url: str, corpus: Corpus, name: str, params: list[tuple[str, str]], expected: set[str]) -> None:
    found = _found(_get(url, "/series", [SCOPE, *params]), "0020000E")
    assert found == {corpus.uid[s] for s in expected}


def test_series_of_a_study(url: str, corpus: Corpus) -> None:
    response = _get(url, f"/studies/{corpus.uid['s4']}/series", [])
    items = response.json()
    assert [i["0020000E"]["Value"][0] for i in items] == [corpus.uid[s] for s in ("s4ct", "s4mr", "s4ct2")]
    counts = {i["0020000E"]["Value"][0]: i["00201209"]["Value"][0] for i in items}
    assert counts == {corpus.uid["s4ct"]: 2, corpus.uid["s4mr"]: 1, corpus.uid["s4ct2"]: 1}
    for item in items:
        assert set(REQUIRED["series"]) <= set(item)
        assert item["0020000D"]["Value"] == [corpus.uid["s4"]]
        assert item["00081190"]["Value"][0] == f"{url}/studies/{corpus.uid['s4']}/series/{item['0020000E']['Value'][0]}"
        assert "00100010" not in item  # the study is given by the path
    ct = _found(_get(url, f"/studies/{corpus.uid['s4']}/series", [("Modality", "CT")]), "0020000E")
    assert ct == {corpus.uid["s4ct"], corpus.uid["s4ct2"]}


def test_series_at_root_carry_study_attributes(url: str, corpus: Corpus) -> None:
    items = _get(url, "/series", [("PatientID", corpus.patient_id["celik"]), ("includefield", "0008103E,00080021")]).json()
    assert len(items) == 1
    assert set(REQUIRED["study"]) | set(REQUIRED["series"]) <= set(items[0])
    assert items[0]["00201208"]["Value"] == [3]


# -- instance level -----------------------------------------------------------


def test_instance_matching(url: str, corpus: Corpus) -> None:
    def found(params: list[tuple[str, str]], path: str = "/instances") -> set[str]:
        return _found(_get(url, path, [SCOPE, *params]), "00080018")

    assert found([]) == corpus.sops(*corpus.all_series())
    assert found([("SOPClassUID", MR)]) == corpus.sops("s1mr", "s3mr", "s4mr", "s5mr")
    assert found([("InstanceNumber", "3")]) == {corpus.instances["s1ct"][2], corpus.instances["s5mr"][2]}
    assert found([("Modality", "SR")]) == corpus.sops("s3sr")
    assert found([("PatientName", "çelik*"), ("InstanceNumber", "2")]) == {corpus.instances["s5mr"][1]}
    some = [corpus.instances["s1ct"][0], corpus.instances["s4mr"][0]]
    assert found([("SOPInstanceUID", ",".join(some))]) == set(some)
    assert found([("SeriesInstanceUID", corpus.uid["s4ct"])]) == corpus.sops("s4ct")
    assert found([("Rows", "4")]) == corpus.sops(*corpus.all_series()) - corpus.sops("s3sr")
    study_path = f"/studies/{corpus.uid['s1']}/instances"
    assert found([], study_path) == corpus.sops("s1ct", "s1mr")
    series_path = f"/studies/{corpus.uid['s1']}/series/{corpus.uid['s1mr']}/instances"
    assert found([], series_path) == corpus.sops("s1mr")
    assert found([("InstanceNumber", "2")], series_path) == {corpus.instances["s1mr"][1]}


def test_instances_return_attributes(url: str, corpus: Corpus) -> None:
    path = f"/studies/{corpus.uid['s1']}/series/{corpus.uid['s1ct']}/instances"
    items = _get(url, path, []).json()
    assert [i["00080018"]["Value"][0] for i in items] == corpus.instances["s1ct"]  # InstanceNumber order
    for item in items:
        assert set(REQUIRED["instance"]) <= set(item)
        assert item["00280010"]["Value"] == [4]
        sop = item["00080018"]["Value"][0]
        assert item["00081190"]["Value"] == [f"{url}/studies/{corpus.uid['s1']}/series/{corpus.uid['s1ct']}/instances/{sop}"]
        assert "0008103E" not in item and "00100010" not in item
    everything = _get(url, "/instances", [("PatientID", corpus.patient_id["celik"]), ("limit", "1")]).json()[0]
    assert set(REQUIRED["study"]) | set(REQUIRED["series"]) | set(REQUIRED["instance"]) <= set(everything)
    assert everything["00201209"]["Value"] == [3] and everything["00201208"]["Value"] == [3]


def test_instance_includefield_all_and_metadata_only_attributes(url: str, corpus: Corpus) -> None:
    path = f"/studies/{corpus.uid['s5']}/instances"
    plain = _get(url, path, []).json()[0]
    assert "00180050" not in plain and "00200032" not in plain
    every = _get(url, path, [("includefield", "all")]).json()[0]
    assert "0008103E" in every and "00081030" in every  # series and study level attributes too
    asked = _get(url, path, [("includefield", "SliceThickness")]).json()
    assert [i["00180050"]["Value"] for i in asked] == [[1.5]] * 3


# -- paging ---------------------------------------------------------------------


@pytest.mark.parametrize(("path", "tag", "size"), [("/instances", "00080018", 4), ("/series", "0020000E", 2),
                                                   ("/studies", "0020000D", 2)])
def test_pages_never_overlap_or_skip(url: str, corpus: Corpus, path: str, tag: str, size: int) -> None:
    whole = [i[tag]["Value"][0] for i in _get(url, path, [SCOPE]).json()]
    pages: list[str] = []
    for offset in range(0, len(whole) + size, size):
        page = _get(url, path, [SCOPE, ("limit", str(size)), ("offset", str(offset))]).json()
        assert len(page) <= size
        pages += [i[tag]["Value"][0] for i in page]
    assert pages == whole and len(set(whole)) == len(whole)


def test_limit_over_the_maximum_is_capped_with_a_warning(url: str, corpus: Corpus) -> None:
    response = _get(url, "/studies", [SCOPE, ("limit", "100000000")])
    assert response.status_code == 200
    assert "limit reduced" in response.headers["warning"] and response.headers["warning"].startswith("299 ")


def test_unsupported_matching_key_is_ignored_with_a_warning(url: str, corpus: Corpus) -> None:
    response = _get(url, "/studies", [SCOPE, ("SeriesDescription", "x")])
    assert _found(response, "0020000D") == {corpus.uid[s.label] for s in STUDIES}
    assert "SeriesDescription" in response.headers["warning"]


# -- dicomweb_client ------------------------------------------------------------


def test_dicomweb_client_searches(dicomweb: Any, corpus: Corpus) -> None:
    def uids(items: list[dict[str, Any]], tag: str) -> set[str]:
        return {i[tag]["Value"][0] for i in items}

    found = dicomweb.search_for_studies(search_filters={"PatientID": f"Q{RUN}*", "PatientName": "Mül*",
                                                        "StudyDate": "20200101-20231231"})
    assert uids(found, "0020000D") == {corpus.uid["s2"]}
    found = dicomweb.search_for_studies(search_filters={"PatientID": f"Q{RUN}*", "PatientName": "hans müll"},
                                        fuzzymatching=True, fields=["StudyDescription"])
    assert uids(found, "0020000D") == {corpus.uid["s1"], corpus.uid["s2"]}
    assert {i["00081030"]["Value"][0] for i in found} == {"Thorax", "Head"}
    found = dicomweb.search_for_studies(search_filters={"PatientID": f"Q{RUN}*"}, limit=2, offset=2)
    assert uids(found, "0020000D") == {corpus.uid["s3"], corpus.uid["s2"]}
    found = dicomweb.search_for_series(corpus.uid["s3"], search_filters={"Modality": "MR"})
    assert uids(found, "0020000E") == {corpus.uid["s3mr"]}
    found = dicomweb.search_for_series(search_filters={"PatientID": f"Q{RUN}*", "SeriesDescription": "T2*"})
    assert uids(found, "0020000E") == {corpus.uid["s4mr"], corpus.uid["s5mr"]}
    found = dicomweb.search_for_instances(corpus.uid["s4"], corpus.uid["s4ct"])
    assert uids(found, "00080018") == corpus.sops("s4ct")
    found = dicomweb.search_for_instances(search_filters={"PatientID": f"Q{RUN}*", "Modality": "SR"})
    assert uids(found, "00080018") == corpus.sops("s3sr")
    assert dicomweb.search_for_studies(search_filters={"PatientID": f"Q{RUN}-nobody"}) == []


# -- read-your-writes, media types, errors --------------------------------------


def test_read_your_writes(url: str, corpus: Corpus) -> None:
    """What a STOW response acknowledged, the very next QIDO finds."""
    data = Corpus()
    data.patient_id = {**corpus.patient_id, "doe": corpus.patient_id["doe"] + "-new"}
    study = StudySpec("new", "doe", "20240101", "090000", "N1", "New", (("newct", "CT", 1, "New", CT, 1),))
    data.uid = {"new": generate_uid(), "newct": generate_uid()}
    scope = ("PatientID", data.patient_id["doe"])
    for number in range(1, 6):
        assert stow(url, [_instance(data, study, study.series[0], number)]).status_code == 200
        sop = data.instances["newct"][-1]
        assert _found(_get(url, "/instances", [scope, ("SOPInstanceUID", sop)]), "00080018") == {sop}
        counts = _get(url, "/studies", [scope]).json()[0]
        assert (counts["00201206"]["Value"], counts["00201208"]["Value"]) == ([1], [number])


@pytest.mark.parametrize("accept", [None, "application/dicom+json", "application/dicom+json, application/json",
                                    "application/json", "*/*", "application/dicom+json;q=0.9, */*;q=0.1"])
def test_json_is_the_default_and_list_accepts_work(url: str, corpus: Corpus, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    response = _get(url, "/studies", [("PatientID", corpus.patient_id["doe"])], headers=headers)
    assert _found(response, "0020000D") == {corpus.uid["s3"]}


def test_xml_when_asked(url: str, corpus: Corpus) -> None:
    response = _get(url, "/series", [SCOPE, ("Modality", "MR")],
                    headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/related")
    assert response.content.count(b"<NativeDicomModel") == 4
    assert corpus.uid["s5mr"].encode() in response.content


def test_not_acceptable(http: Client) -> None:
    response = _get(http, "/studies", [SCOPE], headers={"Accept": "image/png"})
    assert response.status_code == 406
    assert "application/dicom+json" in response.text  # says what can be answered


def test_empty_results_are_200_with_an_empty_list(url: str, corpus: Corpus) -> None:
    for path in ("/studies", "/series", "/instances", f"/studies/{generate_uid()}/series",
                 f"/studies/{generate_uid()}/instances", f"/studies/{corpus.uid['s1']}/series/{generate_uid()}/instances"):
        response = _get(url, path, [("PatientID", f"Q{RUN}-nobody")] if not path.startswith("/studies/") else [])
        assert (response.status_code, response.json()) == (200, []), path


@pytest.mark.parametrize(("path", "query", "reason"), [
    ("/studies", "NoSuchKeyword=1", "unknown"),
    ("/studies", "StudyDate=2020-13-01", "StudyDate"),
    ("/studies", "StudyDate=20200101-20190101", "StudyDate"),
    ("/studies", "StudyTime=25", "StudyTime"),
    ("/studies", "limit=-1", "limit"),
    ("/studies", "limit=ten", "limit"),
    ("/studies", "offset=1.5", "offset"),
    ("/studies", "fuzzymatching=maybe", "fuzzymatching"),
    ("/studies", "PatientID=" + "X" * 65, "PatientID"),
    ("/studies", "StudyInstanceUID=1.2.abc", "StudyInstanceUID"),
    ("/series", "Modality=lower", "Modality"),
    ("/studies", "PatientName=%FF", "UTF-8"),
    ("/studies", "StudyDate=2020&StudyDate=2021", "StudyDate"),
    ("/studies/1.2.x/series", "", "study"),
    ("/studies/1.2.3/series/1.2.x/instances", "", "series"),
])
def test_bad_queries_are_400_with_a_reason(http: Client, path: str, query: str, reason: str) -> None:
    response = _get(http, path, query)
    assert response.status_code == 400, response.text
    assert reason.lower() in response.text.lower()
    assert "X" * 65 not in response.text  # the client's value is not echoed



# -- the patient level (GET /patients, README "Patients") ---------------------------

#: The corpus's four patients only (other tests store more patients under SCOPE).
PATIENTS_SCOPE = ("PatientID", f"Q{RUN}-?")

PATIENT_CASES: list[tuple[str, list[tuple[str, str]], set[str]]] = [
    ("all in scope", [], {"mueller", "doe", "meyer", "celik"}),
    ("PN wildcard UTF-8", [("PatientName", "mül*")], {"mueller"}),
    ("PN exact other case", [("PatientName", "doe^john^quincy")], {"doe"}),
    ("PN ideographic group", [("PatientName", "ミュラー*")], {"mueller"}),
    ("PN wildcard ?", [("PatientName", "?elik*")], {"celik"}),
    ("fuzzy", [("PatientName", "ann mey"), ("fuzzymatching", "true")], {"meyer"}),
    ("birth date range", [("PatientBirthDate", "19600101-19751231")], {"mueller", "meyer"}),
    ("birth date -B", [("PatientBirthDate", "-19700101")], {"mueller", "meyer"}),
    ("sex", [("PatientSex", "F")], {"meyer", "celik"}),
    ("sex universal", [("PatientSex", "")], {"mueller", "doe", "meyer", "celik"}),
    ("hex tag", [("00100040", "M")], {"doe", "mueller"}),
    ("no match", [("PatientName", "Smith*")], set()),
]


def _patient_labels(corpus: Corpus, response: requests.Response) -> set[str]:
    by_id = {pid: label for label, pid in corpus.patient_id.items()}
    return {by_id[pid] for pid in _found(response, "00100020")}


@pytest.mark.parametrize(("name", "params", "expected"), PATIENT_CASES, ids=[c[0] for c in PATIENT_CASES])
def test_patient_matching(url: str, corpus: Corpus, name: str, params: list[tuple[str, str]], expected: set[str]) -> None:
    assert _patient_labels(corpus, _get(url, "/patients", [PATIENTS_SCOPE, *params])) == expected


def test_patient_required_attributes_and_exact_counts(url: str, corpus: Corpus) -> None:
    items = _get(url, "/patients", [PATIENTS_SCOPE]).json()
    assert [i["00100020"]["Value"][0] for i in items] == sorted(corpus.patient_id.values())  # PatientID order
    counts = {"mueller": [2, 3, 7], "doe": [1, 2, 3], "meyer": [1, 3, 4], "celik": [1, 1, 3]}
    for item in items:
        label = next(p for p, pid in corpus.patient_id.items() if pid == item["00100020"]["Value"][0])
        assert set(REQUIRED["patient"]) <= set(item)
        assert [item[t]["Value"][0] for t in ("00201200", "00201202", "00201204")] == counts[label]
        assert item["00100030"]["Value"] == [PATIENTS[label][1]]
        assert "0020000D" not in item and "00081190" not in item  # no study attributes, no URL
    [doe] = _get(url, "/patients", [PATIENTS_SCOPE, ("PatientName", "doe*"), ("includefield", "all")]).json()
    assert doe["00100040"]["Value"] == ["M"] and "00080020" not in doe


def test_patient_pages_and_warnings(url: str, corpus: Corpus) -> None:
    every = [i["00100020"]["Value"][0] for i in _get(url, "/patients", [PATIENTS_SCOPE]).json()]
    pages = [i["00100020"]["Value"][0] for offset in range(0, 4, 3)
             for i in _get(url, "/patients", [PATIENTS_SCOPE, ("limit", "3"), ("offset", str(offset))]).json()]
    assert pages == every
    response = _get(url, "/patients", [PATIENTS_SCOPE, ("limit", "100000000"), ("StudyDate", "2020")])
    assert response.status_code == 200
    warnings = response.headers["warning"]
    assert "limit reduced" in warnings and "StudyDate" in warnings


@pytest.mark.parametrize("params", [
    [("PatientBirthDate", "19701301")], [("PatientBirthDate", "1970*")], [("limit", "x")], [("PatientSex", "m")],
    [("NoSuchKey", "1")],
])
def test_patient_bad_values_are_400(url: str, params: list[tuple[str, str]]) -> None:
    assert _get(url, "/patients", params).status_code == 400
