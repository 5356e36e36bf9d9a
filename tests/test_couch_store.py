"""The CouchDB store's own promises, against a real pouchdb-server:
several frontends on one database, exact counts under concurrent writers,
and a CouchDB that dies and comes back during a STOW load."""

from __future__ import annotations

import io
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests import couchdb, dicomgen
from tests.httpclient import json_of, referenced, split_multipart, stow
from tests.server import ServerProcess


def _frontend(tmp: str, name: str, couch_url: str, db: str) -> ServerProcess:
    return ServerProcess(os.path.join(tmp, name), os.path.join(tmp, name + ".log"),
                         "--couchdb", couch_url, "--couchdb-db", db)


@pytest.fixture
def two_frontends(couch_server: couchdb.CouchServer, tmp_path: os.PathLike[str]) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    db = "two-" + uuid.uuid4().hex[:8]
    with _frontend(str(tmp_path), "a", couch_server.url, db) as a, _frontend(str(tmp_path), "b", couch_server.url, db) as b:
        yield a, b
    for proc in (a, b):
        assert "Traceback" not in proc.log(), proc.log()[-3000:]


def _sop(part: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True).SOPInstanceUID)


def test_two_frontends_on_one_database_give_identical_answers(two_frontends: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = two_frontends
    study = generate_uid()
    assert stow(a.url, list(dicomgen.ct_series(3, study_uid=study))).status_code == 200
    assert stow(b.url, list(dicomgen.ct_series(2, study_uid=study, modality="MR"))).status_code == 200
    answers = []
    for proc in (a, b):
        studies = requests.get(f"{proc.url}/studies", params={"StudyInstanceUID": study}).json()
        metadata = requests.get(f"{proc.url}/studies/{study}/metadata").json()
        bodies = [body for _, body in split_multipart(requests.get(f"{proc.url}/studies/{study}"))]
        for item in studies:  # RetrieveURL names the frontend asked; the rest must be equal
            item.pop("00081190")
        for item in metadata:
            for element in item.values():
                if "BulkDataURI" in element:
                    element["BulkDataURI"] = element["BulkDataURI"].split("/", 3)[3]
        answers.append((studies, metadata, bodies))
    assert answers[0] == answers[1]
    studies = answers[0][0]
    assert studies[0]["00201208"]["Value"] == [5] and studies[0]["00201206"]["Value"] == [2]
    assert sorted(studies[0]["00080061"]["Value"]) == ["CT", "MR"]
    # Both see the whole study list the same way (same order, same counts).
    lists = [requests.get(f"{p.url}/studies").json() for p in (a, b)]
    first, second = ([(s["0020000D"], s["00201208"]) for s in one] for one in lists)
    assert first == second


def test_eight_clients_storing_into_one_series_through_two_frontends_give_exact_counts(
        two_frontends: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = two_frontends
    study, series = generate_uid(), generate_uid()

    def client(n: int) -> list[str]:
        url = (a, b)[n % 2].url
        acked: list[str] = []
        for batch in range(3):
            parts = [dicomgen.ct_instance(study, series, n * 100 + batch * 10 + i, size=32) for i in range(4)]
            response = stow(url, parts)
            assert response.status_code == 200, response.text
            acked += referenced(json_of(response))
        # A retry of the last request changes nothing.
        assert stow(url, parts).status_code == 200
        return acked

    with ThreadPoolExecutor(8) as pool:
        acked = [sop for result in pool.map(client, range(8)) for sop in result]
    assert len(set(acked)) == 8 * 3 * 4
    for proc in (a, b):
        found = requests.get(f"{proc.url}/studies", params={"StudyInstanceUID": study}).json()
        assert found[0]["00201208"]["Value"] == [96]
        assert found[0]["00201206"]["Value"] == [1]
        assert len(requests.get(f"{proc.url}/studies/{study}/series/{series}/metadata").json()) == 96


@pytest.fixture
def disk_couch(tmp_path: os.PathLike[str]) -> Iterator[couchdb.CouchServer]:
    if not couchdb.available():
        pytest.skip("pouchdb-server is not installed (run: npm ci --ignore-scripts)")
    server = couchdb.CouchServer(os.path.join(tmp_path, "pouch"), in_memory=False)
    with server:
        yield server


def test_couchdb_killed_and_restarted_during_stow_loses_nothing_acknowledged(
        disk_couch: couchdb.CouchServer, tmp_path: os.PathLike[str]) -> None:
    frontend = _frontend(str(tmp_path), "front", disk_couch.url, "restart")
    acked: dict[str, tuple[str, str, bytes]] = {}
    statuses: list[int] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        study = generate_uid()
        number = 0
        while not stop.is_set():
            series = generate_uid()
            parts = []
            for _ in range(4):
                number += 1
                parts.append(dicomgen.ct_instance(study, series, number, size=32, seed=worker * 10000 + number))
            try:
                response = stow(frontend.url, parts)
            except requests.RequestException:
                continue
            statuses.append(response.status_code)
            if response.status_code == 200:
                by_uid = {_sop(p): p for p in parts}
                for sop in referenced(json_of(response)):
                    acked[sop] = (study, series, by_uid[sop])
            elif response.status_code == 503:
                assert response.headers.get("Retry-After")
                time.sleep(0.2)

    with frontend:
        workers = [threading.Thread(target=load, args=(i,)) for i in range(3)]
        for w in workers:
            w.start()
        try:
            _wait(lambda: len(acked) >= 40, 30)
            disk_couch.kill()
            before = len(statuses)
            _wait(lambda: statuses[before:].count(503) >= 2, 30)
            assert requests.get(f"{frontend.url}/studies").status_code == 503
            disk_couch.start()
            count = len(acked)
            _wait(lambda: len(acked) >= count + 40, 60)  # recovered by itself
        finally:
            stop.set()
            for w in workers:
                w.join(60)
        url = frontend.url
        for sop, (study, series, data) in acked.items():
            response = requests.get(f"{url}/studies/{study}/series/{series}/instances/{sop}")
            assert response.status_code == 200, sop
            assert split_multipart(response)[0][1] == data
        for study_json in requests.get(f"{url}/studies").json():
            study = study_json["0020000D"]["Value"][0]
            count = study_json["00201208"]["Value"][0]
            assert len(requests.get(f"{url}/studies/{study}/metadata").json()) == count
        assert "Traceback" not in frontend.log(), frontend.log()[-3000:]


def _wait(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
