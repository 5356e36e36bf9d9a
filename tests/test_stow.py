"""STOW-RS behaviour, against the real server, with real files and clients."""

from __future__ import annotations

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests import dicomgen
from tests.httpclient import failed, json_of, referenced, split_multipart, stow

SAMPLES = [
    "CT_small.dcm",  # CT, explicit little endian
    "MR_small.dcm",
    "MR_small_RLE.dcm",  # RLE lossless
    "emri_small_jpeg_2k_lossless.dcm",  # JPEG 2000, multi-frame
    "emri_small_jpeg_ls_lossless.dcm",  # JPEG-LS
    "MR_small_bigendian.dcm",
    "SC_rgb_rle_2frame.dcm",
    "examples_ybr_color.dcm",  # 30-frame JPEG baseline
    "rtdose.dcm",  # 15 frames, implicit VR
    "MR2_J2KR.dcm",
    "US1_UNCR.dcm",
]


def _uids(path: str) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def _read(path: str) -> bytes:
    with open(path, "rb") as fp:
        return fp.read()


@pytest.mark.parametrize("name", SAMPLES)
def test_a_stored_file_is_retrieved_byte_identical(url: str, dicomweb, name: str) -> None:
    path = dicomgen.sample_file(name)
    study, series, sop = _uids(path)
    dataset = dicomweb.store_instances([pydicom.dcmread(path)])
    assert sop in [item.ReferencedSOPInstanceUID for item in dataset.ReferencedSOPSequence]
    response = requests.get(f"{url}/studies/{study}/series/{series}/instances/{sop}",
                            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert response.status_code == 200
    parts = split_multipart(response)
    assert len(parts) == 1
    headers, body = parts[0]
    assert "transfer-syntax=" in headers["content-type"]
    # dicomweb_client re-encodes what it sends; compare with what it sent, then store raw bytes too.
    raw = _read(path)
    response = stow(url, [raw])
    assert response.status_code == 200, response.text
    _, body = split_multipart(requests.get(f"{url}/studies/{study}/series/{series}/instances/{sop}"))[0]
    assert body == raw


def test_the_response_references_every_stored_instance_with_a_resolvable_url(url: str) -> None:
    parts = list(dicomgen.ct_series(5))
    response = stow(url, parts)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/dicom+json")
    body = json_of(response)
    assert len(referenced(body)) == 5
    study_url = body["00081190"]["Value"][0]
    assert study_url.startswith(url + "/studies/")
    for item in body["00081199"]["Value"]:
        assert item["00081150"]["Value"] == [dicomgen.CT_IMAGE_STORAGE]
        instance_url = item["00081190"]["Value"][0]
        assert requests.get(instance_url).status_code == 200


def test_the_study_list_shows_stored_studies_with_exact_counts(url: str, dicomweb) -> None:
    study = generate_uid()
    stow(url, list(dicomgen.ct_series(3, study_uid=study)) + list(dicomgen.ct_series(2, study_uid=study, modality="MR")))
    found = dicomweb.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert len(found) == 1
    assert found[0]["00201206"]["Value"] == [2]
    assert found[0]["00201208"]["Value"] == [5]
    assert sorted(found[0]["00080061"]["Value"]) == ["CT", "MR"]
    assert found[0]["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]


def test_storing_the_same_instance_again_creates_no_duplicate(url: str, dicomweb) -> None:
    parts = list(dicomgen.ct_series(3))
    study = pydicom.dcmread(__import__("io").BytesIO(parts[0])).StudyInstanceUID
    assert stow(url, parts).status_code == 200
    assert stow(url, parts).status_code == 200
    assert stow(url, parts[:1] + parts[:1]).status_code == 200
    found = dicomweb.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert found[0]["00201208"]["Value"] == [3]


def test_storing_changed_bytes_under_the_same_uid_replaces_the_instance(url: str) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    first = dicomgen.ct_instance(study, series, 1, sop_uid=sop, seed=1)
    second = dicomgen.ct_instance(study, series, 1, sop_uid=sop, seed=2)
    assert first != second
    assert stow(url, [first]).status_code == 200
    assert stow(url, [second]).status_code == 200
    _, body = split_multipart(requests.get(f"{url}/studies/{study}/series/{series}/instances/{sop}"))[0]
    assert body == second
    assert len(split_multipart(requests.get(f"{url}/studies/{study}"))) == 1


def test_an_instance_of_another_study_is_refused_with_its_own_failure_item(url: str) -> None:
    target = generate_uid()
    good = dicomgen.ct_instance(target, generate_uid(), 1)
    other = dicomgen.ct_instance(generate_uid(), generate_uid(), 2)
    response = stow(url, [good, other], study=target)
    assert response.status_code == 202
    body = json_of(response)
    assert len(referenced(body)) == 1
    assert [reason for _, reason in failed(body)] == [0xA900]
    assert body["00081190"]["Value"] == [f"{url}/studies/{target}"]


def test_the_response_is_xml_when_asked(url: str) -> None:
    response = stow(url, list(dicomgen.ct_series(1)), headers={"Accept": "application/dicom+xml"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/dicom+xml")
    assert b"<NativeDicomModel" in response.content and b'tag="00081199"' in response.content


def test_study_series_and_instance_metadata_have_resolvable_bulk_data_uris(url: str) -> None:
    study, series = generate_uid(), generate_uid()
    stow(url, list(dicomgen.ct_series(2, study_uid=study, series_uid=series)))
    for path in (f"studies/{study}", f"studies/{study}/series/{series}"):
        response = requests.get(f"{url}/{path}/metadata")
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/dicom+json"
        items = json_of(response)
        assert len(items) == 2
        assert items[0]["7FE00010"]["BulkDataURI"].startswith(f"{url}/studies/{study}/series/{series}/instances/")
        assert items[0]["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]


def test_a_utf8_patient_name_survives_storage_and_search(url: str, dicomweb) -> None:
    study = generate_uid()
    stow(url, list(dicomgen.ct_series(1, study_uid=study, patient_name="Müller^Jürgen=ミュラー^ユルゲン")))
    found = dicomweb.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert found[0]["00100010"]["Value"][0]["Alphabetic"] == "Müller^Jürgen"
    assert found[0]["00100010"]["Value"][0]["Ideographic"] == "ミュラー^ユルゲン"
