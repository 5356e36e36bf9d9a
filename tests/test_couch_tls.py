"""TLS to CouchDB: an https:// CouchDB behind a private CA, trusted with --couchdb-ca."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom.uid import generate_uid

from tests import couchdb, dicomgen
from tests.httpclient import stow
from tests.security_fixtures import TlsFiles, write_tls_files
from tests.server import REPO, ServerProcess


@pytest.fixture
def tls_couch(couch_server: couchdb.CouchServer, tmp_path: Path) -> Iterator[tuple[str, TlsFiles]]:
    """pouchdb-server (plain HTTP) behind a TLS-terminating reverse proxy."""
    tls = write_tls_files(tmp_path)
    port = couchdb.free_port()
    forward = subprocess.Popen(
        [sys.executable, "-m", "tests.tlsproxy",
         f"ssl:{port}:interface=127.0.0.1:privateKey={tls.key}:certKey={tls.cert}",
         "127.0.0.1", str(couch_server.port)], cwd=REPO)
    url = f"https://localhost:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            requests.get(url, verify=tls.ca, timeout=2).raise_for_status()
            break
        except requests.RequestException:
            assert time.monotonic() < deadline, "TLS forwarder did not start"
            time.sleep(0.1)
    yield url, tls
    forward.terminate()
    forward.wait(10)


def test_the_couch_store_talks_tls_to_a_couchdb_behind_a_private_ca(
        tls_couch: tuple[str, TlsFiles], tmp_path: Path) -> None:
    url, tls = tls_couch
    db = "tls-" + generate_uid()[-8:].replace(".", "")
    with ServerProcess(str(tmp_path / "data"), str(tmp_path / "server.log"),
                       "--couchdb", url, "--couchdb-db", db, "--couchdb-ca", tls.ca) as server:
        study = generate_uid()
        assert stow(server.url, list(dicomgen.ct_series(2, study_uid=study))).status_code == 200
        found = requests.get(f"{server.url}/studies", params={"StudyInstanceUID": study}).json()
        assert found[0]["00201208"]["Value"] == [2]


def test_a_couchdb_certificate_from_an_untrusted_ca_is_refused(tls_couch: tuple[str, TlsFiles], tmp_path: Path) -> None:
    url, _ = tls_couch
    (tmp_path / "other").mkdir()
    other = write_tls_files(tmp_path / "other")  # a CA that did not sign CouchDB's certificate
    server = ServerProcess(str(tmp_path / "data"), str(tmp_path / "server.log"),
                           "--couchdb", url, "--couchdb-db", "untrusted", "--couchdb-ca", other.ca)
    with pytest.raises(RuntimeError, match="did not start"):
        server.start(timeout=6)  # the store never opens: it keeps refusing the certificate
    assert "Site starting" not in server.log()
