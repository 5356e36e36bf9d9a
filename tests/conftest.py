"""Shared fixtures.

``server`` is the real server on a real loopback port, parametrised over
every store, so each behaviour test runs against each store (one
conformance suite). Stores are added to ``STORES`` as they exist.

The "couch" store runs against pouchdb-server (a CouchDB-API server from
npm, pinned by package-lock.json), started here on a free loopback port.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests import couchdb
from tests.inprocess import BODY_SHAPES, Client, InProcessServer
from tests.server import ServerProcess

# Property tests: no per-example deadline (the 2-core CI machine runs servers
# beside them) and derandomised, so a CI run is reproducible.
settings.register_profile("dicomweb", deadline=None, derandomize=True)
settings.load_profile("dicomweb")

STORES = ["embedded", "couch"]


@pytest.fixture(scope="session")
def couch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[couchdb.CouchServer]:
    """One in-memory pouchdb-server for the session; tests use their own databases."""
    if not couchdb.available():
        if os.environ.get("CI"):
            raise RuntimeError("pouchdb-server is not installed: scripts/test runs npm ci")
        pytest.skip("pouchdb-server is not installed (run: npm ci --ignore-scripts)")
    with couchdb.CouchServer(str(tmp_path_factory.mktemp("pouchdb"))) as server:
        yield server


def store_args(request: pytest.FixtureRequest, store: str) -> list[str]:
    """Extra server options that select ``store`` (a new database for couch)."""
    if store == "embedded":
        return []
    couch: couchdb.CouchServer = request.getfixturevalue("couch_server")
    return ["--couchdb", couch.url, "--couchdb-db", "test-" + uuid.uuid4().hex[:12]]


@pytest.fixture(scope="session", params=STORES)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp(f"server-{request.param}")
    proc = ServerProcess(str(base / "data"), str(base / "server.log"), "--max-request-size", "64M",
                         *store_args(request, request.param))
    with proc:
        yield proc
    log = proc.log()
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture
def url(server: ServerProcess) -> str:
    return server.url


@pytest.fixture
def dicomweb(url: str):
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url)


@pytest.fixture(params=STORES)
def fresh_server(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Iterator[ServerProcess]:
    """A server of its own (and, for couch, a database of its own), for tests
    that stop, kill or reconfigure it."""
    proc = ServerProcess(os.path.join(tmp_path, "data"), os.path.join(tmp_path, "server.log"),
                         *store_args(request, request.param))
    yield proc
    proc.stop()


@pytest.fixture(params=BODY_SHAPES)
def inproc(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Iterator[InProcessServer]:
    """The service in this process on an embedded store of its own (see
    tests/inprocess.py), for behaviour tests that need no real process;
    once for each way a request body is received (as ``server`` is once per store)."""
    with InProcessServer(os.path.join(tmp_path, "data"), "--max-request-size", "64M",
                         bodies=request.param) as server:
        yield server


@pytest.fixture
def http(inproc: InProcessServer) -> Client:
    """A ``requests``-like client of ``inproc`` (paths or full URLs)."""
    return inproc.client
