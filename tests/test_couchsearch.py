"""The CouchDB store's QIDO answers are exactly the embedded store's.

One generated corpus (odd names, missing dates and numbers, multi-valued and
sequence attributes, instances replaced and moved) is stored through STOW
into an embedded server and a CouchDB server; a table of queries over all six
resources must give identical JSON (RetrieveURL compared without the host),
in the same order, with the same paging. Then the CouchDB database is turned
back into a schema 1 database (no key documents, no order keys) and a new
server must upgrade it and still answer the same.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicomweb.dicom.query import build_filter
from dicomweb.store.couchschema import SCHEMA_VERSION
from dicomweb.store.couchsearch import encode_asc, encode_desc, encode_number, mango_regex
from tests import couchdb
from tests.httpclient import stow
from tests.server import ServerProcess

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
ROOT = "1.2.826.0.1.3680043.10.99." + str(uuid.uuid4().int % 10**8)
NAMES = ["Müller^Hans", "Doe^John^Quincy", "Meyer-Lansky^Anna", "Çelik^Ayşe", "O'Brien^Seán", "Müller^Hanna",
         "Yamada^Tarou=山田^太郎=やまだ^たろう", "doe^jane"]


def _uid(*parts: int) -> str:
    return ROOT + "." + ".".join(str(p) for p in parts)


def _instance(study: int, series: int, number: int | None, *, sop: str | None = None, name: str | None = None,
              date: str | None = "auto", modality: str | None = None, extra: int = 0) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = MR if series % 3 == 1 else CT
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = UID(sop or _uid(3, study, series, number or 0, extra))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(1, study), _uid(2, study, series)
    ds.PatientName = name or NAMES[study % len(NAMES)]
    ds.PatientID = f"CS{study % 5}"
    if date == "auto":
        date = None if study % 7 == 3 else f"{2015 + study % 9}{(study % 12) + 1:02d}{(study % 27) + 1:02d}"
    if date:
        ds.StudyDate = date
        if study % 4:
            ds.StudyTime = f"{study % 24:02d}3000"
    ds.AccessionNumber = f"A{study % 6}{study}"
    ds.StudyDescription = ["Thorax", "Head", "Knee", "thorax"][study % 4]
    ds.Modality = modality or ("MR" if series % 3 == 1 else "CT" if series % 3 == 0 else "SR")
    if series != 4:
        ds.SeriesNumber = series % 3  # two series may share a number: UID breaks the tie
    ds.SeriesDescription = f"S{series} desc"
    if number is not None:
        ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if number and number % 2 else "LOCALIZER"]
    request = Dataset()
    request.RequestedProcedureID = f"RP{study % 3}"
    ds.RequestAttributesSequence = [request]
    ds.SliceThickness = "2.5"
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(4)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def corpus() -> list[list[bytes]]:
    """STOW requests, in order: 14 studies, then replacements and moves."""
    batches = []
    for study in range(14):
        parts = []
        for series in range(1 + study % 4 + (study == 5)):
            for number in range(1, 2 + (study + series) % 4):
                parts.append(_instance(study, series, None if (study, number) == (2, 2) else number))
        batches.append(parts)
    # Replacements: study 1 gets another patient name (latest write wins for the
    # study), an instance of study 2 moves to another series, one changes number.
    batches.append([_instance(1, 0, 1, name="Renamed^Patient"),
                    _instance(2, 2, 7, sop=_uid(3, 2, 0, 1, 0)),
                    _instance(3, 0, 9, sop=_uid(3, 3, 0, 1, 0))])
    return batches


def _store_args(store: str, couch: couchdb.CouchServer, db: str) -> list[str]:
    return [] if store == "embedded" else ["--couchdb", couch.url, "--couchdb-db", db]


@pytest.fixture(scope="module")
def servers(couch_server: couchdb.CouchServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("couchsearch")
    db = "cs-" + uuid.uuid4().hex[:10]
    procs = {store: ServerProcess(str(base / store), str(base / f"{store}.log"), *_store_args(store, couch_server, db))
             for store in ("embedded", "couch")}
    # A second frontend on the same database that finds candidates through at
    # most 2 keys per filter: the "too many candidates" paths give the same answers.
    procs["couch-capped"] = ServerProcess(str(base / "capped"), str(base / "capped.log"),
                                          *_store_args("couch", couch_server, db),
                                          env={"QIDO_COUCH_MAX_CANDIDATES": "2"})
    for proc in procs.values():
        proc.start()
    try:
        for batch in corpus():
            for proc in (procs["embedded"], procs["couch"]):
                response = stow(proc.url, batch)
                assert response.status_code == 200, response.text
        yield {"procs": procs, "couch": couch_server, "db": db, "base": base}
    finally:
        for proc in procs.values():
            proc.stop()
            assert "Traceback" not in proc.log(), proc.log()[-3000:]


QUERIES: list[tuple[str, str]] = [
    ("/studies", ""),
    ("/studies", "limit=3&offset=2"),
    ("/studies", "offset=12"),
    ("/studies", "PatientName=müller*"),
    ("/studies", "PatientName=MULLER^HANS"),
    ("/studies", "PatientName=*n*&StudyDate=20160101-20211231"),
    ("/studies", "PatientName=hans&fuzzymatching=true"),
    ("/studies", "PatientName=ta yam&fuzzymatching=true"),
    ("/studies", "PatientName=山田*"),
    ("/studies", "PatientName=*=やまだ^たろう"),
    ("/studies", "PatientName=o'b?ien*"),
    ("/studies", "PatientName=Renamed*"),
    ("/studies", "StudyDate=-20191231&includefield=all"),
    ("/studies", "StudyTime=1000-1959"),
    ("/studies", "ModalitiesInStudy=SR"),
    ("/studies", "ModalitiesInStudy=MR\\SR&PatientID=CS1"),
    ("/studies", "StudyDescription=thorax"),
    ("/studies", "AccessionNumber=A2*&includefield=00081030"),
    ("/studies", "ProcedureCodeSequence.CodeValue=X"),
    ("/series", ""),
    ("/series", "limit=5&offset=7"),
    ("/series", "Modality=CT&limit=4&offset=1"),
    ("/series", "SeriesNumber=0"),
    ("/series", "SeriesDescription=S?%20desc&PatientName=d*"),
    ("/series", "RequestAttributesSequence.RequestedProcedureID=RP1"),
    ("/series", "ModalitiesInStudy=SR&Modality=MR"),
    ("/instances", ""),
    ("/instances", "limit=7&offset=5"),
    ("/instances", "offset=40"),
    ("/instances", "InstanceNumber=1"),
    ("/instances", "InstanceNumber=2\\3&Modality=CT&limit=6&offset=2"),
    ("/instances", "ImageType=LOCALIZER"),
    ("/instances", "SOPClassUID=1.2.840.10008.5.1.4.1.1.4&PatientName=*e*"),
    ("/instances", "includefield=SliceThickness&limit=5"),
    ("/instances", "includefield=all&StudyDate=20160101-"),
    ("/instances", f"SOPInstanceUID={_uid(3, 2, 0, 1, 0)},{_uid(3, 3, 0, 1, 0)},{_uid(3, 5, 1, 2, 0)},{_uid(9, 9)}"),
    ("/instances", f"SeriesInstanceUID={_uid(2, 5, 1)}\\{_uid(2, 2, 2)}"),
    ("/instances", f"StudyInstanceUID={_uid(1, 5)}&InstanceNumber=1"),
    (f"/studies/{_uid(1, 5)}/series", ""),
    (f"/studies/{_uid(1, 5)}/series", "Modality=CT"),
    (f"/studies/{_uid(1, 5)}/instances", "limit=2&offset=1"),
    (f"/studies/{_uid(1, 2)}/instances", ""),
    (f"/studies/{_uid(1, 2)}/series/{_uid(2, 2, 2)}/instances", ""),
    (f"/studies/{_uid(1, 2)}/series/{_uid(2, 2, 2)}/instances", "ImageType=AXIAL"),
    (f"/studies/{_uid(1, 99)}/series", ""),
    ("/patients", ""),
    ("/patients", "limit=2&offset=1"),
    ("/patients", "offset=4"),
    # Each patient has the name of its study stored last (the replacements included).
    ("/patients", "PatientName=meyer*"),
    ("/patients", "PatientName=ayse&fuzzymatching=true"),
    ("/patients", "PatientName=Renamed*"),
    ("/patients", "PatientID=CS1&includefield=all"),
    ("/patients", "PatientID=CS?&PatientName=*e*&limit=2&offset=1"),
]


def _answer(url: str, path: str, query: str) -> Any:
    response = requests.get(f"{url}{path}?{query}", timeout=30)
    assert response.status_code == 200, response.text
    items = response.json()
    for item in items:
        if "00081190" in item:
            item["00081190"]["Value"] = [v.replace(url, "") for v in item["00081190"]["Value"]]
    return items


def _compare(procs: dict[str, ServerProcess]) -> int:
    nonempty = 0
    for path, query in QUERIES:
        embedded = _answer(procs["embedded"].url, path, query)
        for name, proc in procs.items():
            if name != "embedded":
                assert _answer(proc.url, path, query) == embedded, (name, path, query)
        nonempty += bool(embedded)
    return nonempty


def test_couch_answers_equal_embedded_answers(servers: dict[str, Any]) -> None:
    assert _compare(servers["procs"]) >= len(QUERIES) - 3  # the table really finds things


def test_a_schema_1_database_is_upgraded_at_start(servers: dict[str, Any]) -> None:
    couch, db = servers["couch"].url, servers["db"]
    servers["procs"]["couch"].stop()
    # Back to schema 1: no key documents, no order keys, version 1.
    rows = requests.get(f"{couch}/{db}/_all_docs", params={"include_docs": "true"}, timeout=60).json()["rows"]
    writes = []
    for row in rows:
        doc = row["doc"]
        if doc["_id"].startswith("q:"):
            writes.append({"_id": doc["_id"], "_rev": doc["_rev"], "_deleted": True})
        elif "o" in doc:
            del doc["o"]
            writes.append(doc)
    assert requests.post(f"{couch}/{db}/_bulk_docs", json={"docs": writes}, timeout=60).ok
    schema = requests.get(f"{couch}/{db}/_local/dicomweb-schema", timeout=10).json()
    schema["version"] = 1
    assert requests.put(f"{couch}/{db}/_local/dicomweb-schema", json=schema, timeout=10).ok
    base = servers["base"]
    upgraded = ServerProcess(str(base / "couch2"), str(base / "couch2.log"), "--couchdb", couch, "--couchdb-db", db)
    with upgraded:
        assert "schema 1 -> 2" in upgraded.log()
        _compare({"embedded": servers["procs"]["embedded"], "couch": upgraded})
        # The other frontend, which kept running, sees the upgraded database too.
        _compare({"embedded": servers["procs"]["embedded"], "couch-capped": servers["procs"]["couch-capped"]})
    assert "Traceback" not in upgraded.log()


def _as_schema_2(couch: str, db: str) -> None:
    """Give a database what a schema 2 server wrote besides the schema 3
    documents: float study sort keys and PatientID on study documents, and
    the two indexes on them."""
    rows = requests.get(f"{couch}/{db}/_all_docs", params={"include_docs": "true", "startkey": '"s:"',
                                                         "endkey": '"s:\ufff0"'}, timeout=60).json()["rows"]
    writes = []
    for row in rows:
        doc, attrs = row["doc"], row["doc"]["attrs"]
        date, time = (attrs.get(tag, {}).get("Value", [None])[0] for tag in ("00080020", "00080030"))
        doc.update(pid=attrs.get("00100020", {}).get("Value", [None])[0],
                   od=-float(date) if date else 1e15, ot=-float(time) if time else 1e15)
        writes.append(doc)
    assert writes and requests.post(f"{couch}/{db}/_bulk_docs", json={"docs": writes}, timeout=60).ok
    for name, fields in (("studies-by-date", ["doctype", "od", "ot", "study"]),
                         ("studies-by-patient", ["doctype", "pid", "od", "ot", "study"])):
        index: dict[str, Any] = {"index": {"fields": fields}, "ddoc": "dicomweb-v1", "name": name, "type": "json"}
        assert requests.post(f"{couch}/{db}/_index", json=index, timeout=60).ok
    schema = requests.get(f"{couch}/{db}/_local/dicomweb-schema", timeout=10).json()
    schema["version"] = 2
    assert requests.put(f"{couch}/{db}/_local/dicomweb-schema", json=schema, timeout=10).ok


def test_a_schema_2_database_is_upgraded_at_start(servers: dict[str, Any]) -> None:
    couch, db = servers["couch"].url, servers["db"]
    servers["procs"]["couch"].stop()
    _as_schema_2(couch, db)
    base = servers["base"]
    upgraded = ServerProcess(str(base / "couch3"), str(base / "couch3.log"), "--couchdb", couch, "--couchdb-db", db)
    with upgraded:
        assert "schema 2 -> 3" in upgraded.log()
        names = {i["name"] for i in requests.get(f"{couch}/{db}/_index", timeout=10).json()["indexes"]}
        assert not names & {"studies-by-date", "studies-by-patient"}
        assert {"instances-by-study", "series-by-study", "qkeys", "studies-by-order"} <= names
        rows = requests.get(f"{couch}/{db}/_all_docs", params={"include_docs": "true", "startkey": '"s:"',
                                                             "endkey": '"s:\ufff0"'}, timeout=60).json()["rows"]
        assert rows and not [r["id"] for r in rows if {"od", "ot", "pid"} & set(r["doc"])]
        assert requests.get(f"{couch}/{db}/_local/dicomweb-schema", timeout=10).json()["version"] == SCHEMA_VERSION
        _compare({"embedded": servers["procs"]["embedded"], "couch": upgraded})
        _compare({"embedded": servers["procs"]["embedded"], "couch-capped": servers["procs"]["couch-capped"]})
    assert "Traceback" not in upgraded.log()


def _as_schema_3(couch: str, db: str) -> None:
    """Give a database what a schema 3 server wrote: no patient documents,
    no patient key documents, study documents without ``pk`` and ``at``."""
    rows = requests.get(f"{couch}/{db}/_all_docs", params={"include_docs": "true"}, timeout=60).json()["rows"]
    writes = []
    for row in rows:
        doc = row["doc"]
        if doc["_id"].startswith("p:") or (doc.get("doctype") == "qkey" and doc.get("l") == "patient"):
            writes.append({"_id": doc["_id"], "_rev": doc["_rev"], "_deleted": True})
        elif doc.get("doctype") == "study":
            writes.append({k: v for k, v in doc.items() if k not in ("pk", "at")})
    assert writes and requests.post(f"{couch}/{db}/_bulk_docs", json={"docs": writes}, timeout=60).ok
    schema = requests.get(f"{couch}/{db}/_local/dicomweb-schema", timeout=10).json()
    schema["version"] = 3
    assert requests.put(f"{couch}/{db}/_local/dicomweb-schema", json=schema, timeout=10).ok


def test_a_schema_3_database_gets_its_patients_at_start(servers: dict[str, Any]) -> None:
    couch, db = servers["couch"].url, servers["db"]
    servers["procs"]["couch"].stop()
    _as_schema_3(couch, db)
    assert not requests.get(f"{couch}/{db}/_all_docs", params={"startkey": '"p:"', "endkey": '"p:\ufff0"'},
                            timeout=10).json()["rows"]
    base = servers["base"]
    upgraded = ServerProcess(str(base / "couch4"), str(base / "couch4.log"), "--couchdb", couch, "--couchdb-db", db)
    with upgraded:
        assert "schema 3 -> 4" in upgraded.log()
        assert requests.get(f"{couch}/{db}/_local/dicomweb-schema", timeout=10).json()["version"] == SCHEMA_VERSION
        _compare({"embedded": servers["procs"]["embedded"], "couch": upgraded})
        _compare({"embedded": servers["procs"]["embedded"], "couch-capped": servers["procs"]["couch-capped"]})
    assert "Traceback" not in upgraded.log()


# -- pure parts ---------------------------------------------------------------

_TEXT = st.text(alphabet=st.sampled_from(list("0123456789.-,AZaz~^ \u00e9\u4e00\U0001f600")), max_size=12)


@given(_TEXT, _TEXT, _TEXT, _TEXT)
def test_order_encodings_keep_tuple_order_in_digits(a: str, b: str, c: str, d: str) -> None:
    for enc in (encode_asc, encode_desc):
        x, y = enc(a) + enc(c), enc(b) + enc(d)
        assert set(x) <= set("0123456789")
        if (a, c) != (b, d):
            assert (x < y) == ((a, c) < (b, d) if enc is encode_asc else (a, c) > (b, d))


@given(st.integers(), st.integers())
def test_number_encoding(m: int, n: int) -> None:
    clamp = 1 << 62
    m2, n2 = max(-clamp, min(m, clamp)), max(-clamp, min(n, clamp))
    assert (encode_number(m) < encode_number(n)) == (m2 < n2)
    assert encode_number(None) >= encode_number(n)


def test_mango_regex_escapes_and_widens_question_marks() -> None:
    flt = build_filter("00100010", "PN", "study", "a.b(c)?*")
    assert mango_regex(flt) == r"^A\.B\(C\)[\s\S]{1,4}[\s\S]*$"
