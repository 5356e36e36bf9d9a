"""Orthanc (Debian ``orthanc``) as a real DIMSE peer, on every store:
Orthanc pushes to the server (C-STORE from its REST ``/modalities/{id}/store``),
queries it (C-FIND) and retrieves from it (C-MOVE, the server sending into
Orthanc); UIDs and Pixel Data are compared byte for byte.  Skipped when
Orthanc is not installed (``apt-get install orthanc``)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import STORES, store_args
from tests.dicomgen import ct_series
from tests.dimse_helpers import DimseServer, pydicom_file, run_dcmtk
from tests.httpclient import stow
from tests.orthanc import Orthanc


@pytest.fixture(scope="module", params=STORES)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[DimseServer, Orthanc]]:
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    base = tmp_path_factory.mktemp(f"orthanc-{request.param}")
    orthanc = Orthanc(base)
    server = DimseServer(str(base / "data"), str(base / "server.log"),
                         "--dimse-peer", f"ORTHANC=127.0.0.1:{orthanc.dicom_port}", *store_args(request, request.param))
    with server:
        orthanc.start(server.dimse_port)
        try:
            yield server, orthanc
        finally:
            orthanc.stop()
    assert "Traceback" not in server.log()


def test_orthanc_pushes_a_study_to_the_server(pair: tuple[DimseServer, Orthanc]) -> None:
    server, orthanc = pair
    study = generate_uid()
    sent = {}
    for data in ct_series(3, study_uid=study, patient_name="Orthanc^Push"):
        sent[str(dcmread(io.BytesIO(data)).SOPInstanceUID)] = data
        orthanc.post("/instances", data)
    orthanc_study = orthanc.post("/tools/lookup", study.encode())[0]["ID"]
    job = orthanc.post("/modalities/dicomweb/store", {"Resources": [orthanc_study], "Synchronous": True})
    assert job.get("FailedInstancesCount", 0) == 0
    found = requests.get(f"{server.url}/studies/{study}/instances", timeout=30).json()
    assert {i["00080018"]["Value"][0] for i in found} == set(sent)
    for sop, data in sent.items():
        series = dcmread(io.BytesIO(data)).SeriesInstanceUID
        got = requests.get(f"{server.url}/studies/{study}/series/{series}/instances/{sop}",
                           headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                           timeout=30)
        assert dcmread(io.BytesIO(data)).PixelData in got.content


def test_orthanc_queries_and_retrieves_from_the_server(pair: tuple[DimseServer, Orthanc]) -> None:
    server, orthanc = pair
    original = Path(pydicom_file("MR_small_jp2klossless.dcm")).read_bytes()
    assert stow(server.url, [original]).status_code == 200
    ds = dcmread(io.BytesIO(original))
    query = orthanc.post("/modalities/dicomweb/query",
                         {"Level": "Study", "Query": {"StudyInstanceUID": str(ds.StudyInstanceUID),
                                                      "PatientName": "", "StudyDate": ""}})
    answers = requests.get(f"{orthanc.url}/queries/{query['ID']}/answers?expand", timeout=30).json()
    assert len(answers) == 1
    assert answers[0]["0020,000d"]["Value"] == str(ds.StudyInstanceUID)
    # Orthanc asks the server to C-MOVE the study into Orthanc itself.
    orthanc.post(f"/queries/{query['ID']}/retrieve", {"TargetAet": "ORTHANC", "Synchronous": True})
    instance = orthanc.post("/tools/lookup", str(ds.SOPInstanceUID).encode())[0]["ID"]
    got = requests.get(f"{orthanc.url}/instances/{instance}/file", timeout=30).content
    got_ds = dcmread(io.BytesIO(got))
    assert got_ds.SOPInstanceUID == ds.SOPInstanceUID
    assert got_ds.PixelData == ds.PixelData


def test_movescu_moves_a_study_into_orthanc(pair: tuple[DimseServer, Orthanc]) -> None:
    server, orthanc = pair
    study = generate_uid()
    sent = list(ct_series(2, study_uid=study))
    assert stow(server.url, sent).status_code == 200
    result = run_dcmtk("movescu", "-S", "-aec", "DICOMWEB", "-aem", "ORTHANC", "-k", "QueryRetrieveLevel=STUDY",
                       "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(server.dimse_port))
    assert result.returncode == 0, result.stderr
    for data in sent:
        ds = dcmread(io.BytesIO(data))
        instance = orthanc.post("/tools/lookup", str(ds.SOPInstanceUID).encode())[0]["ID"]
        got = dcmread(io.BytesIO(requests.get(f"{orthanc.url}/instances/{instance}/file", timeout=30).content))
        assert got.PixelData == ds.PixelData
