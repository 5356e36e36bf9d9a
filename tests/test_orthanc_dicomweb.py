"""Orthanc as a DICOMweb client (its ``orthanc-dicomweb`` plugin, "send to
DICOMweb server"): it pushes whole studies here by STOW-RS, with its own
multipart framing, and the server stores every instance byte for byte.
Skipped when Orthanc or its DICOMweb plugin is not installed."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator

import pytest
import requests
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.dicomgen import ct_series, sample_file
from tests.httpclient import split_multipart
from tests.orthanc import Orthanc, dicomweb_plugin_installed
from tests.server import ServerProcess

RETRIEVE = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


@pytest.fixture(scope="module")
def orthanc(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    if shutil.which("Orthanc") is None or not dicomweb_plugin_installed():
        pytest.skip("Orthanc and its DICOMweb plugin are not installed (apt-get install orthanc-dicomweb)")
    peer = Orthanc(tmp_path_factory.mktemp("orthanc-dicomweb")).start(dicomweb_url=server.url)
    try:
        yield peer
    finally:
        peer.stop()


def _push(orthanc: Orthanc, instances: list[bytes]) -> str:
    for data in instances:
        orthanc.post("/instances", data)
    study = str(dcmread(io.BytesIO(instances[0])).StudyInstanceUID)
    orthanc_study = orthanc.post("/tools/lookup", study.encode())[0]["ID"]
    orthanc.post("/dicom-web/servers/dicomweb/stow", {"Resources": [orthanc_study], "Synchronous": True})
    return study


def _retrieved(url: str, data: bytes) -> bytes:
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    response = requests.get(f"{url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                            f"/instances/{ds.SOPInstanceUID}", headers=RETRIEVE, timeout=30)
    assert response.status_code == 200, response.text
    ((_, body),) = split_multipart(response)
    return body


def test_orthanc_sends_a_study_over_dicomweb_and_every_instance_is_stored_as_sent(
        url: str, orthanc: Orthanc) -> None:
    instances = list(ct_series(4, study_uid=generate_uid(), patient_name="Orthanc^Stow"))
    study = _push(orthanc, instances)
    found = requests.get(f"{url}/studies/{study}/instances", timeout=30).json()
    assert len(found) == len(instances)
    for data in instances:
        assert _retrieved(url, data) == data


def test_orthanc_sends_compressed_and_multiframe_objects_unchanged(url: str, orthanc: Orthanc) -> None:
    instances: list[bytes] = []
    study = generate_uid()
    for name in ("emri_small_jpeg_2k_lossless.dcm", "SC_rgb_rle_2frame.dcm"):
        ds = dcmread(sample_file(name))
        ds.StudyInstanceUID = study
        ds.PatientID, ds.PatientName = "ORTHANC-MF", "Orthanc^Frames"  # one Orthanc study: same patient
        ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        instances.append(out.getvalue())
    _push(orthanc, instances)
    for data in instances:
        assert _retrieved(url, data) == data
