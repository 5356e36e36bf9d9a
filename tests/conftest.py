"""Shared fixtures.

``server`` is the real server on a real loopback port, parametrised over
every store, so each behaviour test runs against each store (one
conformance suite). Stores are added to ``STORES`` as they exist.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.server import ServerProcess

# Property tests: no per-example deadline (the 2-core CI machine runs servers
# beside them) and derandomised, so a CI run is reproducible.
settings.register_profile("dicomweb", deadline=None, derandomize=True)
settings.load_profile("dicomweb")

STORES = ["embedded"]


@pytest.fixture(scope="session", params=STORES)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp(f"server-{request.param}")
    proc = ServerProcess(str(base / "data"), str(base / "server.log"), "--max-request-size", "64M")
    with proc:
        yield proc
    log = proc.log()
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture
def url(server: ServerProcess) -> str:
    return server.url


@pytest.fixture
def dicomweb(url: str):  # type: ignore[no-untyped-def]
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url)


@pytest.fixture
def fresh_server(tmp_path: os.PathLike[str]) -> Iterator[ServerProcess]:
    """A server of its own, for tests that stop, kill or reconfigure it."""
    proc = ServerProcess(os.path.join(tmp_path, "data"), os.path.join(tmp_path, "server.log"))
    yield proc
    proc.stop()
