"""TLS: the server listening on ``ssl:`` with a generated certificate, used by
the real dicomweb_client; and the server reaching an identity provider over
TLS with a private CA (``--oidc-ca-file``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from tests.idp import AUDIENCE
from tests.security_fixtures import (
    READER,
    READER_PASSWORD,
    STORES,
    WRITER,
    WRITER_PASSWORD,
    SecureServer,
    Study,
    ThreadedIdp,
    TlsFiles,
    bearer,
    start_server,
    stop_server,
    write_tls_files,
    write_users_file,
)
from tests.server import ServerProcess


@pytest.fixture(name="tls_files", scope="module")
def tls_files_fixture(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return write_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(name="tls_server", scope="module", params=STORES)
def tls_server_fixture(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                       tls_files: TlsFiles) -> Iterator[SecureServer]:
    base = tmp_path_factory.mktemp(f"tls-{request.param}")
    users = write_users_file(base / "users")
    port = f"ssl:0:interface=127.0.0.1:privateKey={tls_files.key}:certKey={tls_files.cert}"
    server = start_server(request, base, "basic", "--port", port, "--auth", "basic",
                          "--users-file", str(users), scheme="https", verify=tls_files.ca)
    yield server
    stop_server(server)


def _client(server: SecureServer, ca: str | bool, user: str = WRITER,
            password: str = WRITER_PASSWORD) -> DICOMwebClient:
    session = requests.Session()
    # With trust_env, REQUESTS_CA_BUNDLE (set on some machines) silently
    # overrides session.verify (a known requests quirk).
    session.trust_env = False
    session.verify = ca
    session.auth = (user, password)
    return DICOMwebClient(server.url, session=session)


def test_dicomweb_client_stores_searches_and_retrieves_over_tls(
        tls_server: SecureServer, tls_files: TlsFiles, tmp_path: Path) -> None:
    assert tls_server.url.startswith("https://")
    study = Study()
    path = tmp_path / "ct.dcm"
    path.write_bytes(study.instance())
    client = _client(tls_server, tls_files.ca)
    client.store_instances([pydicom.dcmread(path)])
    reader = _client(tls_server, tls_files.ca, READER, READER_PASSWORD)
    found = [s["0020000D"]["Value"][0] for s in reader.search_for_studies()]
    assert study.study in found
    instance = reader.retrieve_instance(study.study, study.series, study.sop)
    assert instance.SOPInstanceUID == study.sop


def test_a_client_that_does_not_trust_the_ca_is_refused_by_tls(tls_server: SecureServer) -> None:
    # Plain requests: dicomweb_client would retry for half a minute first.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_server.url + "/studies", auth=(WRITER, WRITER_PASSWORD), timeout=10)


def test_wrong_credentials_over_tls_are_still_401(tls_server: SecureServer, tls_files: TlsFiles) -> None:
    response = requests.get(tls_server.url + "/studies", auth=(WRITER, "nope"), verify=tls_files.ca,
                            timeout=10)
    assert response.status_code == 401


@pytest.fixture(name="tls_idp", scope="module")
def tls_idp_fixture(tls_files: TlsFiles) -> Iterator[ThreadedIdp]:
    idp = ThreadedIdp(tls=tls_files)
    yield idp
    idp.stop()


def _oidc_server(base: Path, idp: ThreadedIdp, *extra: str) -> ServerProcess:
    base.mkdir()
    return ServerProcess(str(base / "data"), str(base / "server.log"), "--auth", "oidc",
                         "--oidc-issuer", idp.provider.issuer, "--oidc-audience", AUDIENCE, *extra)


def test_an_identity_provider_behind_a_private_ca_is_trusted_with_oidc_ca_file(
        tmp_path: Path, tls_idp: ThreadedIdp, tls_files: TlsFiles) -> None:
    assert tls_idp.provider.issuer.startswith("https://")
    token = tls_idp.provider.token(roles=["read"])
    with _oidc_server(tmp_path / "with-ca", tls_idp, "--oidc-ca-file", tls_files.ca) as proc:
        assert requests.get(proc.url + "/studies", headers=bearer(token), timeout=30).status_code == 200
    # Without the CA the certificate is not trusted, and the server says the
    # IdP is unavailable (503, retry later) rather than blaming the token.
    with _oidc_server(tmp_path / "without-ca", tls_idp) as proc:
        response = requests.get(proc.url + "/studies", headers=bearer(token), timeout=30)
        assert response.status_code == 503
        assert response.headers["Retry-After"]
