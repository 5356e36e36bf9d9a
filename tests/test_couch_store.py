"""The CouchDB store's own promises, against a real pouchdb-server:
several frontends on one database, exact counts under concurrent writers,
and a CouchDB that dies and comes back during a STOW load."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from pydicom.uid import generate_uid

from tests import couchdb, dicomgen
from tests.httpclient import json_of, referenced, split_multipart, stow
from tests.server import ServerProcess
from tests.stowload import StowLoad, wait_for


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
    with frontend:
        with StowLoad(frontend.url, per_request=4, retry=True) as load:
            wait_for(lambda: len(load.acked) >= 40, 30)
            disk_couch.kill()
            before = len(load.statuses)
            wait_for(lambda: load.statuses[before:].count(503) >= 2, 30)
            assert requests.get(f"{frontend.url}/studies").status_code == 503
            disk_couch.start()
            count = len(load.acked)
            wait_for(lambda: len(load.acked) >= count + 40, 60)  # recovered by itself
        load.check(frontend.url)
        assert "Traceback" not in frontend.log(), frontend.log()[-3000:]

