"""DIMSE against the real server, on every store: dcmtk's tools and
pynetdicom as clients, a pynetdicom storage SCP as C-MOVE peer, and round
trips across protocols (STOW-RS in -> C-GET out, C-STORE in -> QIDO/WADO out).
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.conftest import STORES, store_args
from tests.dicomgen import ct_instance, ct_series
from tests.dimse_helpers import (
    CT_STORAGE,
    EXPLICIT_LE,
    PATIENT_FIND,
    DimseServer,
    PeerSCP,
    c_find,
    c_get,
    c_move,
    c_store,
    c_store_file,
    identifier,
    pydicom_file,
    run_dcmtk,
    send_partial_c_store,
)
from tests.httpclient import stow

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerSCP]:
    with PeerSCP("PEER") as scp:
        yield scp


@pytest.fixture(scope="module")
def native_peer() -> Iterator[PeerSCP]:
    """A peer that takes only the native little-endian syntaxes."""
    with PeerSCP("NATIVE", syntaxes=[EXPLICIT_LE, "1.2.840.10008.1.2"]) as scp:
        yield scp


@pytest.fixture(scope="module", params=STORES)
def dimse_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 peer: PeerSCP, native_peer: PeerSCP) -> Iterator[DimseServer]:
    base = tmp_path_factory.mktemp(f"dimse-{request.param}")
    proc = DimseServer(str(base / "data"), str(base / "server.log"), "--dimse-peer", peer.option,
                       "--dimse-peer", native_peer.option, *store_args(request, request.param))
    with proc:
        yield proc
    log = proc.log()
    assert "Traceback" not in log, log[-4000:]


def _write(tmp_path: Path, data: bytes, name: str = "one.dcm") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _qido(server: DimseServer, query: str) -> list[dict]:
    response = requests.get(f"{server.url}/{query}", timeout=30)
    response.raise_for_status()
    return response.json() if response.status_code == 200 else []


# -- C-ECHO, C-STORE ---------------------------------------------------------------------------


def test_echoscu(dimse_server: DimseServer) -> None:
    result = run_dcmtk("echoscu", "-aec", "DICOMWEB", "127.0.0.1", str(dimse_server.dimse_port))
    assert result.returncode == 0, result.stderr


def test_storescu_then_qido_and_wado_see_it(dimse_server: DimseServer, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    data = ct_instance(study, series, 1, patient_name="Dimse^Store")
    result = run_dcmtk("storescu", "-aec", "DICOMWEB", "127.0.0.1", str(dimse_server.dimse_port),
                       _write(tmp_path, data))
    assert result.returncode == 0, result.stderr
    # Success was answered only once the instance was searchable: no waiting here.
    found = _qido(dimse_server, f"studies?StudyInstanceUID={study}")
    assert len(found) == 1 and found[0]["00201208"]["Value"] == [1]
    sop = dcmread(io.BytesIO(data)).SOPInstanceUID
    response = requests.get(f"{dimse_server.url}/studies/{study}/series/{series}/instances/{sop}",
                            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                            timeout=30)
    assert response.status_code == 200
    assert dcmread(io.BytesIO(data)).PixelData in response.content


#: dcmtk's storescu proposes a compressed syntax only when told which.
_DCMTK_PROPOSE = {"MR_small_jp2klossless.dcm": "-xv", "MR_small_RLE.dcm": "-xr", "JPEG-LL.dcm": "-xs",
                  "CT_small.dcm": "-xe"}


@pytest.mark.parametrize("name", sorted(_DCMTK_PROPOSE))
def test_storescu_in_the_stored_transfer_syntax(dimse_server: DimseServer, name: str) -> None:
    result = run_dcmtk("storescu", "-aec", "DICOMWEB", _DCMTK_PROPOSE[name], "127.0.0.1",
                       str(dimse_server.dimse_port), pydicom_file(name))
    assert result.returncode == 0, result.stderr + result.stdout
    ds = dcmread(pydicom_file(name))
    found = _qido(dimse_server, f"instances?SOPInstanceUID={ds.SOPInstanceUID}&includefield=00080016")
    assert len(found) == 1


def test_storing_again_follows_the_stow_policy(dimse_server: DimseServer) -> None:
    study = generate_uid()
    data = ct_instance(study, generate_uid(), 1)
    assert c_store(dimse_server.dimse_port, data).Status == 0
    assert c_store(dimse_server.dimse_port, data).Status == 0  # identical bytes: a no-op
    found = _qido(dimse_server, f"studies?StudyInstanceUID={study}")
    assert found[0]["00201208"]["Value"] == [1]


def test_a_cstore_is_a_create_in_the_change_feed(dimse_server: DimseServer) -> None:
    url = dimse_server.url
    start = requests.get(f"{url}/changefeed/latest", timeout=30).json().get("Sequence", 0)
    data = ct_instance(generate_uid(), generate_uid(), 1)
    assert c_store(dimse_server.dimse_port, data).Status == 0
    entries = requests.get(f"{url}/changefeed", params={"offset": start}, timeout=30).json()
    assert [(e["SopInstanceUid"], e["Action"], e["State"]) for e in entries] == [
        (dcmread(io.BytesIO(data)).SOPInstanceUID, "Create", "Current")]


def test_cstore_without_sop_instance_uid_is_refused(dimse_server: DimseServer, tmp_path: Path) -> None:
    study = generate_uid()
    ds = dcmread(io.BytesIO(ct_instance(study, generate_uid(), 1)))
    del ds.SOPInstanceUID  # the file meta still names one: the C-STORE request carries it
    path = tmp_path / "nosop.dcm"
    ds.save_as(path, enforce_file_format=True)
    status = c_store_file(dimse_server.dimse_port, str(path), CT_STORAGE, EXPLICIT_LE)
    assert status.Status == 0xC000
    assert "ErrorComment" in status
    assert _qido(dimse_server, f"studies?StudyInstanceUID={study}") == []


def test_cstore_whose_data_set_names_another_instance_is_refused(dimse_server: DimseServer,
                                                                 tmp_path: Path) -> None:
    study = generate_uid()
    data = ct_instance(study, generate_uid(), 1)
    sop = str(dcmread(io.BytesIO(data)).SOPInstanceUID)
    other = sop[:-1] + ("2" if sop[-1] != "2" else "3")  # same length: the file meta stays valid
    # The first occurrence is the file meta's Media Storage SOP Instance UID,
    # which pynetdicom sends as the request's Affected SOP Instance UID.
    path = tmp_path / "other.dcm"
    path.write_bytes(data.replace(sop.encode(), other.encode(), 1))
    status = c_store_file(dimse_server.dimse_port, str(path), CT_STORAGE, EXPLICIT_LE)
    assert status.Status == 0xA900
    assert "ErrorComment" in status
    assert _qido(dimse_server, f"studies?StudyInstanceUID={study}") == []


def test_cstore_with_an_invalid_uid_is_refused(dimse_server: DimseServer) -> None:
    ds = dcmread(io.BytesIO(ct_instance(generate_uid(), generate_uid(), 1)))
    ds.StudyInstanceUID = "not.a.uid.x"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    status = c_store(dimse_server.dimse_port, out.getvalue())
    assert status.Status & 0xF000 in (0xA000, 0xC000)


@pytest.mark.parametrize("meta_keyword, value, code", [
    ("MediaStorageSOPInstanceUID", None, 0xA900),
    ("MediaStorageSOPClassUID", MR_STORAGE, 0xA900),
])
def test_cstore_whose_data_set_does_not_match_the_request_is_refused(
        dimse_server: DimseServer, tmp_path: Path, meta_keyword: str, value: str | None, code: int) -> None:
    """The C-STORE request announces the file meta's UIDs (pynetdicom sends
    the file as it is); the data set inside names others: nothing stored."""
    study = generate_uid()
    ds = dcmread(io.BytesIO(ct_instance(study, generate_uid(), 1)))
    path = tmp_path / "mismatch.dcm"
    ds.file_meta[meta_keyword].value = value or generate_uid()
    ds.save_as(path)  # enforce_file_format would copy the data set's UIDs into the file meta
    sop_class = str(ds.file_meta.MediaStorageSOPClassUID)
    status = c_store_file(dimse_server.dimse_port, str(path), sop_class, EXPLICIT_LE)
    assert status.Status == code
    assert "differs" in status.ErrorComment
    assert _qido(dimse_server, f"studies?StudyInstanceUID={study}") == []


def test_parallel_associations_each_get_their_own_status(dimse_server: DimseServer) -> None:
    """Instances arriving together on several associations share ingest
    calls (one store transaction): each still gets its own answer, and an
    invalid one among them fails alone."""
    from concurrent.futures import ThreadPoolExecutor

    study = generate_uid()
    good = [ct_instance(study, generate_uid(), n) for n in range(1, 8)]
    bad = dcmread(io.BytesIO(ct_instance(study, generate_uid(), 99)))
    bad.SeriesInstanceUID = "not.a.uid.x"
    out = io.BytesIO()
    bad.save_as(out, enforce_file_format=True)
    sends = [*good[:4], out.getvalue(), *good[4:]]
    with ThreadPoolExecutor(4) as workers:
        statuses = list(workers.map(lambda data: c_store(dimse_server.dimse_port, data).Status, sends))
    assert statuses[4] & 0xF000 in (0xA000, 0xC000)
    assert statuses[:4] + statuses[5:] == [0] * 7
    found = _qido(dimse_server, f"studies?StudyInstanceUID={study}")
    assert found[0]["00201208"]["Value"] == [7]


def test_a_transfer_cut_off_stores_nothing_and_the_server_goes_on(dimse_server: DimseServer,
                                                                   tmp_path: Path) -> None:
    study = generate_uid()
    big = ct_instance(study, generate_uid(), 1, size=3072)  # 18 MB
    send_partial_c_store(dimse_server.dimse_port, big)
    deadline = time.monotonic() + 10
    while "cut off mid-transfer" not in dimse_server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "cut off mid-transfer was discarded" in dimse_server.log()
    assert _qido(dimse_server, f"studies?StudyInstanceUID={study}") == []
    spool = os.path.join(dimse_server.data_dir, "spool")
    assert not [n for n in os.listdir(spool) if n.endswith(".dcm")] if os.path.isdir(spool) else True
    result = run_dcmtk("echoscu", "-aec", "DICOMWEB", "127.0.0.1", str(dimse_server.dimse_port))
    assert result.returncode == 0


# -- C-FIND ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def find_study(dimse_server: DimseServer) -> str:
    """One study (2 series, 3 instances) with a UTF-8 patient name, stored over C-STORE."""
    study = generate_uid()
    series = [generate_uid(), generate_uid()]
    for number, series_uid in ((1, series[0]), (2, series[0]), (3, series[1])):
        status = c_store(dimse_server.dimse_port, ct_instance(study, series_uid, number, patient_name="Müller^Jürgen",
                                                             patient_id="FIND-1", study_date="20230615"))
        assert status.Status == 0
    return study


def test_findscu_wildcard_and_date_range(dimse_server: DimseServer, find_study: str) -> None:
    result = run_dcmtk("findscu", "-v", "-S", "-aec", "DICOMWEB", "-k", "QueryRetrieveLevel=STUDY",
                       "-k", "PatientID=FIND-*", "-k", "StudyDate=20230601-20230630",
                       "-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances",
                       "127.0.0.1", str(dimse_server.dimse_port))
    assert result.returncode == 0, result.stderr
    assert find_study in result.stdout + result.stderr
    assert re.search(r"\[3 *\]\s+#\s+\d+, 1 NumberOfStudyRelatedInstances", result.stdout + result.stderr)


def test_cfind_returns_exactly_the_requested_keys(dimse_server: DimseServer, find_study: str) -> None:
    query = identifier("SERIES", StudyInstanceUID=find_study, SeriesInstanceUID="", Modality="",
                       NumberOfSeriesRelatedInstances="")
    status, answers, _ = c_find(dimse_server.dimse_port, query)
    assert status == 0 and len(answers) == 2
    for answer in answers:
        assert {e.keyword for e in answer} == {"SpecificCharacterSet", "QueryRetrieveLevel", "StudyInstanceUID",
                                               "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances"}
    assert sorted(int(a.NumberOfSeriesRelatedInstances) for a in answers) == [1, 2]


def test_cfind_specific_character_set_and_pn_rules(dimse_server: DimseServer, find_study: str) -> None:
    query = identifier("STUDY", SpecificCharacterSet="ISO_IR 100", PatientName="müller*",
                       StudyInstanceUID="", PatientID="")
    status, answers, _ = c_find(dimse_server.dimse_port, query)
    assert status == 0
    mine = [a for a in answers if a.StudyInstanceUID == find_study]
    assert len(mine) == 1 and str(mine[0].PatientName) == "Müller^Jürgen"


def test_cfind_patient_root_at_image_level_with_a_uid_list(dimse_server: DimseServer, find_study: str) -> None:
    query = identifier("IMAGE", PatientID="FIND-1", StudyInstanceUID=[find_study, generate_uid()],
                       SOPInstanceUID="", InstanceNumber="")
    status, answers, _ = c_find(dimse_server.dimse_port, query, PATIENT_FIND)
    assert status == 0
    assert sorted(int(a.InstanceNumber) for a in answers) == [1, 2, 3]


@pytest.fixture(scope="module")
def patient(dimse_server: DimseServer) -> str:
    """A patient of its own: 2 studies, 3 series, 4 instances, stored over C-STORE."""
    patient_id = "PAT-" + generate_uid()[-12:]
    studies = [generate_uid(), generate_uid()]
    layout = [(studies[0], 0, 1), (studies[0], 0, 2), (studies[0], 1, 3), (studies[1], 2, 1)]
    series = [generate_uid() for _ in range(3)]
    for study, n, number in layout:
        data = ct_instance(study, series[n], number, patient_id=patient_id, patient_name="Zyxwv^Patient")
        assert c_store(dimse_server.dimse_port, data).Status == 0
    return patient_id


def test_cfind_patient_level_counts_are_exact(dimse_server: DimseServer, patient: str) -> None:
    query = identifier("PATIENT", PatientID=patient, PatientName="", NumberOfPatientRelatedStudies="",
                       NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances="")
    status, answers, _ = c_find(dimse_server.dimse_port, query, PATIENT_FIND)
    assert status == 0 and len(answers) == 1
    (found,) = answers
    assert {e.keyword for e in found} == {"SpecificCharacterSet", "QueryRetrieveLevel", "PatientID", "PatientName",
                                          "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                                          "NumberOfPatientRelatedInstances"}
    assert str(found.PatientName) == "Zyxwv^Patient"
    assert (int(found.NumberOfPatientRelatedStudies), int(found.NumberOfPatientRelatedSeries),
            int(found.NumberOfPatientRelatedInstances)) == (2, 3, 4)


def test_cfind_patient_level_name_wildcard_and_birth_date_range(dimse_server: DimseServer, patient: str) -> None:
    query = identifier("PATIENT", PatientName="zyxw*", PatientBirthDate="19691231-19700102", PatientID="")
    status, answers, _ = c_find(dimse_server.dimse_port, query, PATIENT_FIND)
    assert status == 0 and [str(a.PatientID) for a in answers] == [patient]
    query = identifier("PATIENT", PatientName="zyxw*", PatientBirthDate="19800101-", PatientID="")
    assert c_find(dimse_server.dimse_port, query, PATIENT_FIND)[:2] == (0, [])


def test_findscu_patient_root_patient_level(dimse_server: DimseServer, patient: str) -> None:
    result = run_dcmtk("findscu", "-P", "-aec", "DICOMWEB", "-k", "QueryRetrieveLevel=PATIENT",
                       "-k", f"PatientID={patient}", "-k", "NumberOfPatientRelatedInstances",
                       "127.0.0.1", str(dimse_server.dimse_port))
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert patient in out
    assert re.search(r"\[4 *\]\s+#\s+\d+, 1 NumberOfPatientRelatedInstances", out)


def test_cmove_patient_level_sends_every_instance_of_the_patient(dimse_server: DimseServer, patient: str,
                                                                 peer: PeerSCP) -> None:
    from tests.dimse_helpers import associate

    patient_move = "1.2.840.10008.5.1.4.1.2.1.2"
    assoc = associate(dimse_server.dimse_port, [(patient_move, [])])
    assert assoc.is_established
    try:
        statuses = [s for s, _ in assoc.send_c_move(identifier("PATIENT", PatientID=patient), peer.ae_title,
                                                    patient_move)]
    finally:
        assoc.release()
    assert statuses[-1].Status == 0
    assert int(statuses[-1].NumberOfCompletedSuboperations) == 4


@pytest.mark.parametrize("level, keys, code", [
    ("STUDY", {"StudyDate": "20230631-2023"}, 0xC000),
    ("WARD", {"StudyInstanceUID": ""}, 0xA900),
    ("PATIENT", {"PatientID": ""}, 0xA900),  # c_find asks the Study Root model: no PATIENT level there
])
def test_cfind_bad_identifiers_get_failure_statuses(dimse_server: DimseServer, level: str, keys: dict,
                                                    code: int) -> None:
    status, answers, final = c_find(dimse_server.dimse_port, identifier(level, **keys))
    assert (status, answers) == (code, [])
    assert final is not None and "ErrorComment" in final


# -- C-GET, C-MOVE -----------------------------------------------------------------------------


def _stowed_j2k_mr(server: DimseServer) -> tuple[Dataset, Dataset]:
    """A JPEG 2000 MR instance stored over STOW-RS, and the IMAGE-level identifier that names it."""
    original = Path(pydicom_file("MR_small_jp2klossless.dcm")).read_bytes()
    assert stow(server.url, [original]).status_code == 200
    ds = dcmread(io.BytesIO(original))
    return ds, identifier("IMAGE", StudyInstanceUID=ds.StudyInstanceUID, SeriesInstanceUID=ds.SeriesInstanceUID,
                          SOPInstanceUID=ds.SOPInstanceUID)


def test_stow_then_cget_gives_the_stored_pixel_data(dimse_server: DimseServer) -> None:
    ds, query = _stowed_j2k_mr(dimse_server)
    statuses, received = c_get(dimse_server.dimse_port, query, [(MR_STORAGE, [J2K_LOSSLESS, EXPLICIT_LE])])
    assert statuses[-1].Status == 0 and statuses[-1].NumberOfCompletedSuboperations == 1
    got = dcmread(io.BytesIO(received.files[ds.SOPInstanceUID]))
    assert got.file_meta.TransferSyntaxUID == J2K_LOSSLESS
    assert got.PixelData == ds.PixelData  # byte for byte as stored


def test_cget_transcodes_when_the_stored_syntax_is_not_accepted(dimse_server: DimseServer) -> None:
    ds, query = _stowed_j2k_mr(dimse_server)
    statuses, received = c_get(dimse_server.dimse_port, query, [(MR_STORAGE, [EXPLICIT_LE])])
    assert statuses[-1].Status == 0
    got = dcmread(io.BytesIO(received.files[ds.SOPInstanceUID]))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert (got.pixel_array == ds.pixel_array).all()


def test_cget_pending_counts(dimse_server: DimseServer) -> None:
    study = generate_uid()
    for data in ct_series(3, study_uid=study):
        assert c_store(dimse_server.dimse_port, data).Status == 0
    statuses, received = c_get(dimse_server.dimse_port, identifier("STUDY", StudyInstanceUID=study),
                               [(CT_STORAGE, [EXPLICIT_LE])])
    pending = [s for s in statuses if s.Status == 0xFF00]
    assert [int(s.NumberOfRemainingSuboperations) for s in pending] == [2, 1, 0]
    final = statuses[-1]
    assert (final.Status, final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0, 3, 0)
    assert len(received.files) == 3


def test_cmove_to_a_known_peer(dimse_server: DimseServer, peer: PeerSCP, native_peer: PeerSCP) -> None:
    study = generate_uid()
    sent = {}
    for data in ct_series(3, study_uid=study):
        assert c_store(dimse_server.dimse_port, data).Status == 0
        sent[dcmread(io.BytesIO(data)).SOPInstanceUID] = data
    j2k = Path(pydicom_file("MR_small_jp2klossless.dcm")).read_bytes()
    c_store(dimse_server.dimse_port, j2k)
    j2k_ds = dcmread(io.BytesIO(j2k))
    statuses = c_move(dimse_server.dimse_port, identifier("STUDY", StudyInstanceUID=study), "PEER")
    final = statuses[-1]
    assert (final.Status, final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0, 3, 0)
    for sop, data in sent.items():
        assert dcmread(io.BytesIO(peer.received.files[sop])).PixelData == dcmread(io.BytesIO(data)).PixelData
    # A peer that takes only native syntaxes gets the J2K instance transcoded.
    statuses = c_move(dimse_server.dimse_port, identifier("STUDY", StudyInstanceUID=j2k_ds.StudyInstanceUID),
                      "NATIVE")
    assert statuses[-1].Status == 0
    got = dcmread(io.BytesIO(native_peer.received.files[j2k_ds.SOPInstanceUID]))
    assert got.file_meta.TransferSyntaxUID in (EXPLICIT_LE, "1.2.840.10008.1.2")
    assert (got.pixel_array == j2k_ds.pixel_array).all()


def test_movescu_and_getscu(dimse_server: DimseServer, peer: PeerSCP, tmp_path: Path) -> None:
    study = generate_uid()
    for data in ct_series(2, study_uid=study):
        assert c_store(dimse_server.dimse_port, data).Status == 0
    port = str(dimse_server.dimse_port)
    result = run_dcmtk("movescu", "-S", "-aec", "DICOMWEB", "-aem", "PEER", "-k", "QueryRetrieveLevel=STUDY",
                       "-k", f"StudyInstanceUID={study}", "127.0.0.1", port)
    assert result.returncode == 0, result.stderr
    result = run_dcmtk("getscu", "-S", "-aec", "DICOMWEB", "-od", str(tmp_path), "-k", "QueryRetrieveLevel=STUDY",
                       "-k", f"StudyInstanceUID={study}", "127.0.0.1", port)
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.iterdir())) == 2


def test_cmove_to_an_unknown_destination(dimse_server: DimseServer) -> None:
    statuses = c_move(dimse_server.dimse_port, identifier("STUDY", StudyInstanceUID=generate_uid()), "NOWHERE")
    assert statuses[-1].Status == 0xA801


def test_a_large_instance_is_received_to_disk(dimse_server: DimseServer, tmp_path: Path) -> None:
    """Server memory stays flat while a 128 MB instance arrives over C-STORE
    (pynetdicom writes the data set to the spool file as it comes)."""
    import threading

    if "--couchdb" in dimse_server.extra:
        pytest.skip("pouchdb-server refuses a 128 MB attachment (500 RangeError; the store answers 0110)")

    import numpy as np
    import psutil

    study = generate_uid()
    ds = dcmread(io.BytesIO(ct_instance(study, generate_uid(), 1, size=16)))
    ds.Rows = ds.Columns = 4096
    ds.NumberOfFrames = 4
    ds.PixelData = np.zeros((4, 4096, 4096), np.uint16).tobytes()
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    del ds
    process = psutil.Process(dimse_server.proc.pid)  # type: ignore[union-attr]
    start = process.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        status = c_store_file(dimse_server.dimse_port, str(path), CT_STORAGE, EXPLICIT_LE)
    finally:
        done.set()
        sampler.join()
    assert status.Status == 0
    assert _qido(dimse_server, f"studies?StudyInstanceUID={study}")
    assert peak[0] - start < 64 << 20, f"RSS grew by {(peak[0] - start) >> 20} MB"


def test_cfind_honours_c_cancel(dimse_server: DimseServer) -> None:
    from tests.dimse_helpers import STUDY_FIND, associate

    if "--couchdb" in dimse_server.extra:
        pytest.skip("the cancel path does not depend on the store")
    study = generate_uid()
    assert stow(dimse_server.url, list(ct_series(300, study_uid=study, size=8))).status_code == 200
    assoc = associate(dimse_server.dimse_port, [(STUDY_FIND, [])])
    query = identifier("IMAGE", StudyInstanceUID=study, SOPInstanceUID="")
    answers, final = 0, None
    for status, _ in assoc.send_c_find(query, STUDY_FIND, msg_id=7):
        if status.Status == 0xFF00:
            answers += 1
            if answers == 1:
                assoc.send_c_cancel(7, query_model=STUDY_FIND)
        else:
            final = status.Status
    assoc.release()
    assert final == 0xFE00
    assert 1 <= answers < 300
