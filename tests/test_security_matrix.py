"""Every route x every kind of credential.

The whole matrix runs in this process (tests/inprocess.py: the same app,
wrapper and options, on the embedded store): refusals are decided by the
wrapper before routing, so they are exact (401 with a challenge, 403 for a
read-only principal writing).  Accepted requests are checked as "not
401/403" and "not 5xx".  The real server processes (both stores) answer the
accepted column of the matrix, which is where the store is reached, and the
probes: that is the twistd wiring of the same wrapper.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
import requests

from tests.idp import SigningKey, rsa_key
from tests.security_fixtures import (  # noqa: F401  # fixtures
    READER,
    READER_PASSWORD,
    WRITER,
    WRITER_PASSWORD,
    InProcessSecure,
    SecureServer,
    Study,
    basic,
    basic_inprocess_fixture,
    basic_server_fixture,
    bearer,
    idp_inprocess_fixture,
    idp_thread_fixture,
    oidc_inprocess_fixture,
    oidc_server_fixture,
)

#: A well-formed UID of a study that does not exist: accepted writes (delete,
#: reject, STOW into it with an empty body) must not change the seeded data.
ABSENT = "2.25.1"


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    write: bool = False

    def path(self, s: Study) -> str:
        return self.template.format(st=s.study, se=s.series, i=s.sop, absent=ABSENT)

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


_INSTANCE = "/studies/{st}/series/{se}/instances/{i}"
ROUTES = [
    Route("GET", "/studies?PatientID=PID-QX-440172"),
    Route("GET", "/series"),
    Route("GET", "/instances"),
    Route("GET", "/studies/{st}/series"),
    Route("GET", "/studies/{st}/series/{se}/instances"),
    Route("GET", "/studies/{st}"),
    Route("GET", "/studies/{st}/series/{se}"),
    Route("GET", _INSTANCE),
    Route("GET", "/studies/{st}/metadata"),
    Route("HEAD", "/studies/{st}/metadata"),
    Route("GET", _INSTANCE + "/metadata"),
    Route("GET", _INSTANCE + "/frames/1"),
    Route("GET", _INSTANCE + "/bulk/7FE00010"),
    Route("GET", _INSTANCE + "/rendered"),
    Route("GET", _INSTANCE + "/thumbnail"),
    Route("GET", "/wado?requestType=WADO&studyUID={st}&seriesUID={se}&objectUID={i}"),
    Route("OPTIONS", "/studies"),  # not a preflight: capabilities, read access
    Route("GET", "/metrics"),
    Route("GET", "/changefeed?offset=0&limit=5"),
    Route("GET", "/changefeed/latest"),
    Route("POST", "/studies", write=True),
    Route("POST", "/studies/{absent}", write=True),
    Route("POST", "/studies/{absent}/series/{se}/reject/113001%5EDCM", write=True),
    Route("DELETE", "/studies/{absent}", write=True),
    Route("DELETE", "/studies/{absent}/series/{se}", write=True),
]

REFUSED, READ_ONLY, ACCEPTED = "refused", "read-only", "accepted"
Server = SecureServer | InProcessSecure
Headers = Callable[[Server], dict[str, str]]


def _token(**claims: Any) -> Headers:
    return lambda s: bearer(s.idp.provider.token(roles=["read", "write"], **claims))  # type: ignore[union-attr]


@cache
def _stranger() -> SigningKey:
    """A key the IdP never published (generated once: RSA generation is slow)."""
    return rsa_key()


#: One keep-alive connection for the matrix's hundreds of requests.
_SESSION = requests.Session()


def _signed_by_stranger(kid_of_published: bool) -> Headers:
    def headers(s: Server) -> dict[str, str]:
        idp = s.idp.provider  # type: ignore[union-attr]
        stranger = _stranger()
        kid = idp.rsa.kid if kid_of_published else None
        return bearer(idp.token(key=stranger, kid=kid, roles=["read", "write"]))
    return headers


BASIC_CASES: dict[str, tuple[str, Headers]] = {
    "no credentials": (REFUSED, lambda s: {}),
    "malformed header": (REFUSED, lambda s: {"Authorization": "Basic %%%not-base64"}),
    "bearer on basic": (REFUSED, lambda s: bearer("a.b.c")),
    "wrong password": (REFUSED, lambda s: basic(WRITER, READER_PASSWORD)),
    "unknown user": (REFUSED, lambda s: basic("mallory", WRITER_PASSWORD)),
    "read-only user": (READ_ONLY, lambda s: basic(READER, READER_PASSWORD)),
    "valid": (ACCEPTED, lambda s: basic(WRITER, WRITER_PASSWORD)),
}

OIDC_CASES: dict[str, tuple[str, Headers]] = {
    "no credentials": (REFUSED, lambda s: {}),
    "malformed header": (REFUSED, lambda s: {"Authorization": "Bearer not a token"}),
    "basic on oidc": (REFUSED, lambda s: basic(WRITER, WRITER_PASSWORD)),
    "bad signature": (REFUSED, _signed_by_stranger(kid_of_published=True)),
    "expired": (REFUSED, _token(exp=int(time.time()) - 600)),
    "not yet valid": (REFUSED, lambda s: _token(nbf=int(time.time()) + 600)(s)),
    "wrong issuer": (REFUSED, _token(iss="https://evil.example/realms/test")),
    "wrong audience": (REFUSED, _token(aud="another-service")),
    "alg none": (REFUSED, lambda s: bearer(s.idp.provider.unsigned_token(roles=["write"]))),  # type: ignore[union-attr]
    "HS256 with the public key": (
        REFUSED, lambda s: bearer(s.idp.provider.hs256_public_key_token(roles=["write"]))),  # type: ignore[union-attr]
    "unknown kid": (REFUSED, _signed_by_stranger(kid_of_published=False)),
    "unknown opaque token": (REFUSED, lambda s: bearer("0123456789abcdef" * 4)),
    "read-only token": (READ_ONLY, lambda s: bearer(s.idp.provider.token(roles=["read"]))),  # type: ignore[union-attr]
    "valid": (ACCEPTED, _token()),
    "valid opaque token": (
        ACCEPTED, lambda s: bearer(s.idp.provider.opaque_token(roles=["read", "write"]))),  # type: ignore[union-attr]
}


def _check(server: Server, route: Route, case: tuple[str, Headers]) -> None:
    expectation, make_headers = case
    headers = {"Origin": "http://viewer.example", **make_headers(server)}
    http = server.client if isinstance(server, InProcessSecure) else _SESSION
    response = http.request(route.method, server.url + route.path(server.study),
                            headers=headers, timeout=30, data=b"" if route.write else None)
    status = response.status_code
    if expectation == REFUSED:
        assert status == 401, (status, response.text)
        scheme = "Basic" if server.kind == "basic" else "Bearer"
        assert response.headers["WWW-Authenticate"].startswith(f"{scheme} realm="), response.headers
        # A browser script can read the refusal only with CORS headers on it.
        assert response.headers["Access-Control-Allow-Origin"] in ("*", "http://viewer.example")
        assert "WWW-Authenticate" in response.headers["Access-Control-Expose-Headers"]
    elif expectation == READ_ONLY and route.write:
        assert status == 403, (status, response.text)
    else:
        assert status not in (401, 403), (status, response.text)
        assert status < 500, (status, response.text)
    if route.method != "HEAD" and status in (401, 403):
        assert len(response.content) < 200 and response.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("route", ROUTES, ids=str)
@pytest.mark.parametrize("case", list(BASIC_CASES))
def test_basic_auth_matrix(basic_inprocess: InProcessSecure, route: Route, case: str) -> None:
    _check(basic_inprocess, route, BASIC_CASES[case])


@pytest.mark.parametrize("route", ROUTES, ids=str)
@pytest.mark.parametrize("case", list(OIDC_CASES))
def test_oidc_matrix(oidc_inprocess: InProcessSecure, route: Route, case: str) -> None:
    _check(oidc_inprocess, route, OIDC_CASES[case])


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_basic_auth_lets_every_route_through_to_each_store(basic_server: SecureServer, route: Route) -> None:
    _check(basic_server, route, BASIC_CASES["valid"])


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_oidc_lets_every_route_through_to_each_store(oidc_server: SecureServer, route: Route) -> None:
    _check(oidc_server, route, OIDC_CASES["valid"])


def test_an_accepted_read_returns_the_stored_data(basic_server: SecureServer) -> None:
    # Positive control: authentication lets the request through to the app.
    response = requests.get(f"{basic_server.url}/studies/{basic_server.study.study}/metadata",
                            headers=basic(READER, READER_PASSWORD), timeout=30)
    assert response.status_code == 200
    assert basic_server.study.sop in response.text


def test_probes_need_no_credentials_but_metrics_do(basic_server: SecureServer,
                                                  oidc_server: SecureServer) -> None:
    for server in (basic_server, oidc_server):
        assert requests.get(server.url + "/health", timeout=10).status_code == 200
        assert requests.get(server.url + "/ready", timeout=10).status_code == 200
        assert requests.get(server.url + "/metrics", timeout=10).status_code == 401
    metrics = requests.get(basic_server.url + "/metrics", headers=basic(READER, READER_PASSWORD), timeout=10)
    assert metrics.status_code == 200


def test_oidc_challenges_say_why_a_token_failed(oidc_inprocess: InProcessSecure) -> None:
    headers = _token(exp=int(time.time()) - 600)(oidc_inprocess)
    response = oidc_inprocess.client.get("/studies", headers=headers, timeout=10)
    challenge = response.headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in challenge and "expired" in challenge
