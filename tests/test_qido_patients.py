"""GET /patients on the real server of every store: NumberOfPatientRelated*
exact after STOW of several studies of one patient, after delete and after
reject; the patient's attributes from the study that most recently received
an instance; one patient per (PatientID, IssuerOfPatientID) (README "Patients").
Matching rules are in test_qido_conformance.py, identical answers of the two
stores in test_couchsearch.py."""

from __future__ import annotations

import io
import uuid
from typing import Any

import requests
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from tests.httpclient import stow

CT = "1.2.840.10008.5.1.4.1.1.2"


def _instance(pid: str, study: str, series: str, name: str, issuer: str | None = None) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(CT)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.PatientSex = name, pid, "O"
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.Modality = "CT"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _study(url: str, pid: str, name: str, series_sizes: tuple[int, ...], issuer: str | None = None
           ) -> tuple[str, list[str]]:
    study, series = str(generate_uid()), [str(generate_uid()) for _ in series_sizes]
    parts = [_instance(pid, study, se, name, issuer) for se, n in zip(series, series_sizes, strict=True)
             for _ in range(n)]
    response = stow(url, parts)
    assert response.status_code == 200, response.text
    return study, series


def _patients(url: str, pid: str, **params: str) -> list[dict[str, Any]]:
    response = requests.get(f"{url}/patients", params={"PatientID": pid, **params}, timeout=30)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()
    return items


def _counts(item: dict[str, Any]) -> list[int]:
    return [item[tag]["Value"][0] for tag in ("00201200", "00201202", "00201204")]


def test_counts_follow_stow_delete_and_reject(url: str) -> None:
    pid = "PAT-" + uuid.uuid4().hex[:10]
    first, _ = _study(url, pid, "Older^Name", (2, 1))
    second, second_series = _study(url, pid, "Newer^Name", (3, 2))
    other_issuer, _ = _study(url, pid, "Other^Issuer", (1,), issuer="ELSEWHERE")
    items = _patients(url, pid)
    assert len(items) == 2  # one per (PatientID, IssuerOfPatientID); no issuer sorts first
    mine, elsewhere = items
    assert "00100021" not in mine or not mine["00100021"].get("Value")
    assert elsewhere["00100021"]["Value"] == ["ELSEWHERE"] and _counts(elsewhere) == [1, 1, 1]
    assert _counts(mine) == [2, 4, 8]
    # The patient's attributes are those of the study stored last.
    assert mine["00100010"]["Value"][0]["Alphabetic"] == "Newer^Name"
    assert _patients(url, pid, PatientName="older*") == []
    # Reject a series of the newer study: counts drop, the study stays.
    reject = requests.post(f"{url}/studies/{second}/series/{second_series[1]}/reject/113001%5EDCM", timeout=60)
    assert reject.status_code == 204, reject.text
    assert _counts(_patients(url, pid, IssuerOfPatientID="")[0]) == [2, 3, 6]
    # Delete the newer study: the older study's name is the patient's again.
    assert requests.delete(f"{url}/studies/{second}", timeout=60).status_code == 204
    [mine, _] = _patients(url, pid)
    assert _counts(mine) == [1, 2, 3]
    assert mine["00100010"]["Value"][0]["Alphabetic"] == "Older^Name"
    assert _patients(url, pid, PatientName="newer*") == []
    # Storing more into the older study updates the counts again.
    assert stow(url, [_instance(pid, first, generate_uid(), "Older^Name")]).status_code == 200
    assert _counts(_patients(url, pid)[0]) == [1, 3, 4]
    # The last study gone: the patient goes too.
    assert requests.delete(f"{url}/studies/{first}", timeout=60).status_code == 204
    assert requests.delete(f"{url}/studies/{other_issuer}", timeout=60).status_code == 204
    assert _patients(url, pid) == []


def test_a_study_moved_to_another_patient_counts_there(url: str) -> None:
    old_pid, new_pid = "MOVE-" + uuid.uuid4().hex[:8], "MOVE-" + uuid.uuid4().hex[:8]
    study, series = _study(url, old_pid, "Wrong^Patient", (2,))
    assert _counts(_patients(url, old_pid)[0]) == [1, 1, 2]
    # Corrected PatientID: the instances stored again under the right patient.
    response = requests.get(f"{url}/studies/{study}/series/{series[0]}/instances", timeout=30)
    sops = [i["00080018"]["Value"][0] for i in response.json()]
    parts = []
    for sop in sops:
        part = _instance(new_pid, study, series[0], "Right^Patient")
        ds = dcmread(io.BytesIO(part))  # the same SOP Instance UID: a replacement
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        parts.append(out.getvalue())
    assert stow(url, parts).status_code == 200
    assert _patients(url, old_pid) == []
    assert _counts(_patients(url, new_pid)[0]) == [1, 1, 2]
    assert requests.delete(f"{url}/studies/{study}", timeout=60).status_code == 204
