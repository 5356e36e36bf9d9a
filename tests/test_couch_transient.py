"""Transient answers of the database never reach a client as a server
error: a search that the CouchDB-API server fails is retried, then answered
503 with Retry-After; ``/ready`` says 503 while the database is away."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import requests
from twisted.internet import reactor as global_reactor
from twisted.python.threadpool import ThreadPool

from dicomweb.dicom.query import parse_query
from dicomweb.store.base import StoreUnavailable
from dicomweb.store.couch import CouchStore
from dicomweb.store.couchhttp import CouchError
from tests import couchdb
from tests.server import ServerProcess
from tests.stowload import wait_for


@pytest_twisted.async_yield_fixture(name="store")
async def _store(couch_server: couchdb.CouchServer) -> AsyncIterator[CouchStore]:
    store = CouchStore(couch_server.url, "transient-" + uuid.uuid4().hex[:8], global_reactor,  # type: ignore[arg-type]
                       ThreadPool(0, 1))
    await store.open()
    yield store
    await store.close()


def _failing_find(store: CouchStore, failures: int) -> list[int]:
    """Make the next ``failures`` ``_find`` calls fail as pouchdb-server does
    while key documents are replaced; returns the call log."""
    real = store.docs.find
    calls: list[int] = []

    async def find(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= failures:
            raise CouchError(400, "bad_request", "document changed during the query")
        return await real(*args, **kwargs)

    store.docs.find = find  # type: ignore[method-assign]
    return calls


@pytest_twisted.ensureDeferred
async def test_a_search_that_the_database_fails_twice_is_answered(store: CouchStore) -> None:
    calls = _failing_find(store, 2)
    assert await store.search(parse_query("study", [("PatientName", "SMITH*")])) == []
    assert len(calls) >= 3


@pytest_twisted.ensureDeferred
async def test_a_search_that_keeps_failing_is_unavailable_not_an_error(store: CouchStore) -> None:
    _failing_find(store, 1000)
    with pytest.raises(StoreUnavailable):
        await store.search(parse_query("study", [("PatientName", "SMITH*")]))


def test_ready_is_503_while_the_database_is_away_and_200_when_it_is_back(tmp_path: os.PathLike[str]) -> None:
    if not couchdb.available():
        pytest.skip("pouchdb-server is not installed")
    with couchdb.CouchServer(os.path.join(tmp_path, "pouch"), in_memory=False) as couch:
        front = ServerProcess(os.path.join(tmp_path, "front"), os.path.join(tmp_path, "front.log"),
                              "--couchdb", couch.url, "--couchdb-db", "ready")
        with front:
            assert requests.get(front.url + "/ready", timeout=10).status_code == 200
            couch.kill()
            answer = requests.get(front.url + "/ready", timeout=10)
            assert answer.status_code == 503 and answer.headers["Retry-After"]
            couch.start()
            wait_for(lambda: requests.get(front.url + "/ready", timeout=10).status_code == 200, 20)
