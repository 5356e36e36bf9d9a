"""A real, local OpenID Connect identity provider for the auth tests.

:class:`IdentityProvider` serves, over HTTP on a free 127.0.0.1 port:

- ``/realms/test/.well-known/openid-configuration`` (discovery, Keycloak-shaped
  issuer ``http://127.0.0.1:PORT/realms/test``),
- ``/realms/test/certs`` (the JWKS; every fetch is counted),
- ``/realms/test/introspect`` (RFC 7662, HTTP basic client authentication).

Keys are generated with ``cryptography`` (RSA 2048 and EC P-256);
:meth:`IdentityProvider.token` signs tokens; :meth:`IdentityProvider.rotate`
publishes a new RSA key.  Fixtures ``idp``, ``agent`` and ``fake_clock``
(functions ``*_fixture``) are imported by the test modules, so no top-level
conftest is needed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.task import Clock
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from dicomweb.twistedtypes import global_reactor

reactor = global_reactor()

AUDIENCE = "dicomweb"
CLIENT_ID = "dicomweb-server"
CLIENT_SECRET = "client-secret-5f2c"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        """The public JWK, as an IdP publishes it."""
        algorithm = jwt.get_algorithm_by_name(self.alg)
        public = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return pem


def rsa_key(alg: str = "RS256") -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(f"rsa-{uuid.uuid4().hex[:8]}", alg, private)


def ec_key() -> SigningKey:
    return SigningKey(f"ec-{uuid.uuid4().hex[:8]}", "ES256", ec.generate_private_key(ec.SECP256R1()))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _IdpResource(Resource):
    isLeaf = True

    def __init__(self, idp: IdentityProvider) -> None:
        super().__init__()
        self.idp = idp

    def render_GET(self, request: Request) -> bytes | int:
        if self.idp.hang:
            return NOT_DONE_YET  # never answers: exercises client timeouts
        path = request.path.decode()
        if path == "/realms/test/.well-known/openid-configuration":
            self.idp.discovery_fetches += 1
            return self._json(request, self.idp.discovery())
        if path == "/realms/test/certs":
            self.idp.jwks_fetches += 1
            keys = [k.jwk() for k in self.idp.published] + self.idp.extra_jwks
            return self._json(request, {"keys": keys})
        request.setResponseCode(404)
        return b"not found"

    def render_POST(self, request: Request) -> bytes:
        if request.path != b"/realms/test/introspect":
            request.setResponseCode(404)
            return b"not found"
        self.idp.introspections += 1
        if (request.getUser(), request.getPassword()) != (
                CLIENT_ID.encode(), CLIENT_SECRET.encode()):
            request.setResponseCode(401)
            return self._json(request, {"error": "invalid_client"})
        token = request.args.get(b"token", [b""])[0].decode()
        claims = self.idp.opaque.get(token)
        answer = {"active": True, **claims} if claims else {"active": False}
        return self._json(request, answer)

    @staticmethod
    def _json(request: Request, value: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value).encode()


class IdentityProvider:
    """A tiny OIDC provider on 127.0.0.1 (see the module docstring)."""

    def __init__(self) -> None:
        self.rsa = rsa_key()
        self.ec = ec_key()
        self.published: list[SigningKey] = [self.rsa, self.ec]
        #: Raw JWKs published as they are (e.g. a symmetric key that must be ignored).
        self.extra_jwks: list[dict[str, Any]] = []
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.introspections = 0
        self.opaque: dict[str, dict[str, Any]] = {}
        self.hang = False
        self.port_number = 0
        self._port: Any = None

    # -- serving ------------------------------------------------------------

    def start(self, port: int = 0) -> None:
        site = Site(_IdpResource(self))
        site.noisy = False
        self._port = reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[arg-type]  # Twisted: ServerFactory[P] is invariant in P; Site is ServerFactory[HTTPChannel]
        self.port_number = self._port.getHost().port

    async def stop(self) -> None:
        if self._port is not None:
            await self._port.stopListening()
            self._port = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port_number}"

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/realms/test"

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/certs",
            "introspection_endpoint": f"{self.issuer}/introspect",
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        }

    # -- keys and tokens ----------------------------------------------------

    def rotate(self, keep_old: bool = False) -> SigningKey:
        """Publish a new RSA key (and by default withdraw the old one)."""
        old = self.rsa
        self.rsa = rsa_key()
        self.published = [k for k in self.published if keep_old or k is not old]
        self.published.insert(0, self.rsa)
        return self.rsa

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": AUDIENCE, "sub": "user-1",
            "preferred_username": "alice", "iat": now, "exp": now + 300,
            "scope": "openid profile",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key: SigningKey | None = None, kid: str | None = None,
              alg: str | None = None, **claims: Any) -> str:
        """A token signed by ``key`` (default: the current RSA key).

        ``kid``/``alg`` override the header; a claim set to None is left out.
        """
        key = key or self.rsa
        headers = {"kid": kid or key.kid}
        return jwt.encode(self.claims(**claims), key.private, algorithm=alg or key.alg,
                          headers=headers)

    def unsigned_token(self, **claims: Any) -> str:
        """``alg: none``: no signature at all."""
        header = {"alg": "none", "typ": "JWT", "kid": self.rsa.kid}
        return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(self.claims(**claims)).encode())}."

    def hs256_public_key_token(self, **claims: Any) -> str:
        """The classic confusion attack: HMAC with the public key as secret."""
        header = {"alg": "HS256", "typ": "JWT", "kid": self.rsa.kid}
        signing_input = (f"{_b64(json.dumps(header).encode())}."
                         f"{_b64(json.dumps(self.claims(**claims)).encode())}")
        mac = hmac.new(self.rsa.public_pem(), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(mac)}"

    def opaque_token(self, **claims: Any) -> str:
        token = uuid.uuid4().hex + uuid.uuid4().hex
        self.opaque[token] = {**self.claims(**claims), "client_id": "viewer",
                              "token_type": "Bearer"}
        return token


def bearer(token: str) -> bytes:
    return b"Bearer " + token.encode()


# -- fixtures ---------------------------------------------------------------

# Fixture functions are named *_fixture so that test modules can import them
# (pytest finds fixtures in a module's namespace) without shadowing the
# parameter names tests use.

@pytest_twisted.async_yield_fixture(name="idp")
async def idp_fixture() -> AsyncIterator[IdentityProvider]:
    provider = IdentityProvider()
    provider.start()
    yield provider
    await provider.stop()


@pytest.fixture(name="agent")
def agent_fixture() -> Iterator[Agent]:
    # Non-persistent: no connection outlives a test, so stopping the IdP is clean.
    yield Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))


@pytest.fixture(name="fake_clock")
def fake_clock_fixture() -> Clock:
    """Time for rate limits and cache ages, advanced by hand."""
    return Clock()
