"""Servers with authentication on, for the ``test_security_*`` modules: real
processes, and their twins in this process (``*_inprocess``, at the end).

The identity provider of :mod:`tests.idp` (its keys, tokens and discovery
document) is served here by a stdlib HTTP server in a *thread*: the server
under test is a separate process that fetches the key set while the test
blocks in ``requests``, so a provider on the test's own (stopped) reactor
could never answer.

Fixture functions are named ``*_fixture`` (``name=`` gives the fixture name)
so that test modules import them without shadowing parameter names, as in
:mod:`tests.idp`.  Servers are parametrised over ``tests.conftest.STORES``.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.web.server import Site

import tests.conftest
from tests import httpclient
from tests.dicomgen import ct_instance
from tests.idp import AUDIENCE, CLIENT_ID, CLIENT_SECRET, IdentityProvider, _IdpResource
from tests.inprocess import Client, InProcessServer
from tests.server import ServerProcess

STORES = tests.conftest.STORES

READER, READER_PASSWORD = "reader", "reader-pw-Kq81vZ"
WRITER, WRITER_PASSWORD = "writer", "writer-pw-Hd27xM"
#: Distinctive patient attributes: the log test greps the log for them.
PATIENT_NAME = "Zyxwvutsky^Quentina"
PATIENT_ID = "PID-QX-440172"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- identity provider in a thread -------------------------------------------

class _IdpHandler(BaseHTTPRequestHandler):
    server: _IdpHTTPServer

    def do_GET(self) -> None:
        idp = self.server.provider
        path = self.path.split("?", 1)[0]
        if path == "/realms/test/.well-known/openid-configuration":
            idp.discovery_fetches += 1
            self._json(200, idp.discovery())
        elif path == "/realms/test/certs":
            idp.jwks_fetches += 1
            self._json(200, {"keys": [k.jwk() for k in idp.published] + idp.extra_jwks})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        idp = self.server.provider
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if self.path != "/realms/test/introspect" or self.headers.get("Authorization") != expected:
            self._json(401, {"error": "invalid_client"})
            return
        idp.introspections += 1
        claims = idp.opaque.get(parse_qs(body).get("token", [""])[0])
        self._json(200, {"active": True, **claims} if claims else {"active": False})

    def _json(self, status: int, value: Any) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # stdlib's name
        pass  # keep test output quiet


class _IdpHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    provider: IdentityProvider


class _Provider(IdentityProvider):
    """The test IdP with a scheme: ``https`` when served with TLS."""

    scheme = "http"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port_number}"


class ThreadedIdp:
    """:class:`tests.idp.IdentityProvider` served from a thread (see module doc)."""

    def __init__(self, tls: TlsFiles | None = None) -> None:
        self.provider = _Provider()
        self.httpd = _IdpHTTPServer(("127.0.0.1", 0), _IdpHandler)
        self.httpd.provider = self.provider
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert, tls.key)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.provider.scheme = "https"
        self.provider.port_number = self.httpd.server_port
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- files --------------------------------------------------------------------

def write_users_file(path: Path) -> Path:
    """A users file as ``htpasswd -B`` would write it, plus the roles column."""
    def hashed(password: str) -> str:
        # rounds=4: the cheapest bcrypt cost; the tests are not about cost.
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()

    path.write_text(f"# test users\n{READER}:{hashed(READER_PASSWORD)}\n"
                    f"{WRITER}:{hashed(WRITER_PASSWORD)}:read,write\n")
    return path


@dataclass(frozen=True)
class TlsFiles:
    ca: str
    cert: str
    key: str


def write_tls_files(folder: Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dicomweb test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(str(folder / "ca.pem"), str(folder / "cert.pem"), str(folder / "key.pem"))
    Path(files.ca).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    Path(files.cert).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(files.key).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files


# -- servers ------------------------------------------------------------------

@dataclass
class Study:
    """The one instance seeded into each server."""

    study: str = field(default_factory=lambda: f"2.25.{uuid.uuid4().int}")
    series: str = field(default_factory=lambda: f"2.25.{uuid.uuid4().int}")
    sop: str = field(default_factory=lambda: f"2.25.{uuid.uuid4().int}")

    def instance(self) -> bytes:
        return ct_instance(self.study, self.series, 1, sop_uid=self.sop,
                           patient_name=PATIENT_NAME, patient_id=PATIENT_ID)


@dataclass
class SecureServer:
    proc: ServerProcess
    kind: str
    study: Study
    idp: ThreadedIdp | None = None

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def provider(self) -> _Provider:
        """The token issuer of an oidc server (a basic server has none)."""
        assert self.idp is not None, f"a {self.kind} server has no identity provider"
        return self.idp.provider

    def write_headers(self) -> dict[str, str]:
        """Credentials of a principal with the write role."""
        if self.kind == "basic":
            return basic(WRITER, WRITER_PASSWORD)
        assert self.idp is not None
        return bearer(self.idp.provider.token(roles=["read", "write"]))


def start_server(request: pytest.FixtureRequest, base: Path, kind: str, *args: str,
                 idp: ThreadedIdp | None = None, scheme: str = "http",
                 verify: str | bool = True) -> SecureServer:
    """A server on the store ``request.param`` (conftest's store_args picks
    it), with one instance stored by a writer."""
    extra = tests.conftest.store_args(request, request.param)
    proc = ServerProcess(str(base / "data"), str(base / "server.log"), *extra, *args)
    proc.scheme, proc.verify = scheme, verify
    proc.start()
    server = SecureServer(proc, kind, Study(), idp)
    response = httpclient.stow(server.url, [server.study.instance()], verify=verify,
                               headers=server.write_headers())
    assert response.status_code == 200, response.text
    return server


def stop_server(server: SecureServer) -> None:
    server.proc.stop()
    log = server.proc.log()
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture(name="idp_thread", scope="session")
def idp_thread_fixture() -> Iterator[ThreadedIdp]:
    idp = ThreadedIdp()
    yield idp
    idp.stop()


@pytest.fixture(name="basic_server", scope="session", params=STORES)
def basic_server_fixture(request: pytest.FixtureRequest,
                         tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServer]:
    """``--auth basic`` with a CORS origin list (the OIDC server uses ``*``)."""
    base = tmp_path_factory.mktemp(f"basic-{request.param}")
    users = write_users_file(base / "users")
    server = start_server(request, base, "basic", "--auth", "basic", "--users-file", str(users),
                          "--realm", "PACS test", "--cors-origin", "http://viewer.example",
                          "--cors-origin", "http://other.example")
    yield server
    stop_server(server)


@pytest.fixture(name="oidc_server", scope="session", params=STORES)
def oidc_server_fixture(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                        idp_thread: ThreadedIdp) -> Iterator[SecureServer]:
    """``--auth oidc`` against the threaded IdP, introspecting opaque tokens."""
    base = tmp_path_factory.mktemp(f"oidc-{request.param}")
    secret = base / "client-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    server = start_server(request, base, "oidc", "--auth", "oidc",
                          "--oidc-issuer", idp_thread.provider.issuer, "--oidc-audience", AUDIENCE,
                          "--oidc-introspection", "opaque", "--oidc-client-id", CLIENT_ID,
                          "--oidc-client-secret-file", str(secret), idp=idp_thread)
    yield server
    stop_server(server)


# -- the same servers in this process (tests/inprocess.py) --------------------

#: Where the in-process identity provider listens on the in-memory network.
INPROCESS_IDP_PORT = 9080


@dataclass
class InProcessIdp:
    """The identity provider of in-process servers (``.provider``, as
    :class:`ThreadedIdp` has)."""

    provider: _Provider


@dataclass
class InProcessSecure:
    """A :class:`SecureServer` twin in this process: the same options and
    seeded study, the embedded store, and (for oidc) the identity provider
    of :mod:`tests.idp` served on the same in-memory network."""

    server: InProcessServer
    kind: str
    study: Study
    idp: InProcessIdp | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def client(self) -> Client:
        return self.server.client

    def write_headers(self) -> dict[str, str]:
        return SecureServer.write_headers(self)  # type: ignore[arg-type]


def start_inprocess(base: Path, kind: str, *args: str, idp: InProcessIdp | None = None) -> InProcessSecure:
    server = InProcessServer(str(base / "data"), *args)
    if idp is not None:
        server.network.listen("127.0.0.1", INPROCESS_IDP_PORT, Site(_IdpResource(idp.provider), reactor=server.reactor))
    secure = InProcessSecure(server, kind, Study(), idp)
    response = httpclient.stow(server.client, [secure.study.instance()], headers=secure.write_headers())
    assert response.status_code == 200, response.text
    return secure


@pytest.fixture(name="idp_inprocess", scope="session")
def idp_inprocess_fixture() -> InProcessIdp:
    """An identity provider for in-process servers (keys made once: RSA is slow)."""
    provider = _Provider()
    provider.port_number = INPROCESS_IDP_PORT
    return InProcessIdp(provider)


@pytest.fixture(name="basic_inprocess", scope="module")
def basic_inprocess_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessSecure]:
    """``basic_server``'s options, in this process."""
    base = tmp_path_factory.mktemp("basic-inprocess")
    users = write_users_file(base / "users")
    secure = start_inprocess(base, "basic", "--auth", "basic", "--users-file", str(users),
                             "--realm", "PACS test", "--cors-origin", "http://viewer.example",
                             "--cors-origin", "http://other.example")
    with secure.server:
        yield secure


@pytest.fixture(name="oidc_inprocess", scope="module")
def oidc_inprocess_fixture(tmp_path_factory: pytest.TempPathFactory,
                           idp_inprocess: InProcessIdp) -> Iterator[InProcessSecure]:
    """``oidc_server``'s options, in this process."""
    base = tmp_path_factory.mktemp("oidc-inprocess")
    secret = base / "client-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    secure = start_inprocess(base, "oidc", "--auth", "oidc",
                             "--oidc-issuer", idp_inprocess.provider.issuer, "--oidc-audience", AUDIENCE,
                             "--oidc-introspection", "opaque", "--oidc-client-id", CLIENT_ID,
                             "--oidc-client-secret-file", str(secret), idp=idp_inprocess)
    with secure.server:
        yield secure
