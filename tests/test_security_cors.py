"""CORS as a browser (OHIF on another origin) sees it.

The basic-auth server allows a list of origins; the OIDC server the default
``*``.  Preflights carry no credentials, so they must succeed without any.
These run in this process (tests/inprocess.py): CORS is the wrapper's work,
the same whatever the store; a real process answers one preflight and one
refusal, for the twistd wiring.
"""

from __future__ import annotations

from typing import Any

import requests

from dicomweb.web.security import allow_headers
from tests.security_fixtures import (  # noqa: F401  # fixtures
    READER,
    READER_PASSWORD,
    InProcessSecure,
    SecureServer,
    basic,
    basic_inprocess_fixture,
    basic_server_fixture,
    idp_inprocess_fixture,
    oidc_inprocess_fixture,
)

VIEWER = "http://viewer.example"


def _http(server: SecureServer | InProcessSecure) -> Any:
    """The server's client: in-process, or ``requests`` to the real process."""
    return server.client if isinstance(server, InProcessSecure) else requests


def _preflight(server: SecureServer | InProcessSecure, origin: str, method: str = "POST",
               headers: str = "authorization, content-type, accept") -> Any:
    return _http(server).options(server.url + "/studies", timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers})


def _names(value: str) -> set[str]:
    return {v.strip().lower() for v in value.split(",")}


def test_a_preflight_needs_no_credentials_and_allows_what_viewers_send(
        oidc_inprocess: InProcessSecure) -> None:
    response = _preflight(oidc_inprocess, VIEWER, headers="authorization, x-viewer-trace")
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert {"get", "head", "post", "delete", "options"} <= _names(
        response.headers["Access-Control-Allow-Methods"])
    assert {"authorization", "accept", "content-type", "x-viewer-trace"} <= _names(
        response.headers["Access-Control-Allow-Headers"])
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "WWW-Authenticate" not in response.headers


def test_a_listed_origin_is_echoed_and_responses_vary_on_origin(basic_inprocess: InProcessSecure) -> None:
    response = _preflight(basic_inprocess, VIEWER)
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "origin" in _names(response.headers["Vary"])
    got = basic_inprocess.client.get("/studies", headers={
        "Origin": VIEWER, **basic(READER, READER_PASSWORD)}, timeout=10)
    assert got.status_code == 200
    assert got.headers["Access-Control-Allow-Origin"] == VIEWER
    assert {"content-type", "content-location", "location", "warning", "www-authenticate"} <= _names(
        got.headers["Access-Control-Expose-Headers"])
    assert got.headers["Timing-Allow-Origin"] == VIEWER  # a viewer may measure its own loads


def test_an_unlisted_origin_gets_no_cors_headers(basic_inprocess: InProcessSecure) -> None:
    response = _preflight(basic_inprocess, "http://evil.example")
    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    got = basic_inprocess.client.get("/studies", headers={"Origin": "http://evil.example"}, timeout=10)
    assert got.status_code == 401
    assert "Access-Control-Allow-Origin" not in got.headers
    assert "Timing-Allow-Origin" not in got.headers


def test_a_refusal_is_readable_by_the_browser(basic_inprocess: InProcessSecure,
                                              oidc_inprocess: InProcessSecure) -> None:
    for server, allowed in ((basic_inprocess, VIEWER), (oidc_inprocess, "*")):
        response = server.client.get("/studies", headers={"Origin": VIEWER}, timeout=10)
        assert response.status_code == 401
        assert response.headers["Access-Control-Allow-Origin"] == allowed
        assert "www-authenticate" in _names(response.headers["Access-Control-Expose-Headers"])


def test_options_without_preflight_headers_is_authenticated(basic_inprocess: InProcessSecure) -> None:
    # Plain OPTIONS (capabilities) is a read like GET.
    assert basic_inprocess.client.options("/studies", timeout=10).status_code == 401


def test_the_server_process_answers_preflights_and_readable_refusals(basic_server: SecureServer) -> None:
    response = _preflight(basic_server, VIEWER)
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == VIEWER
    refused = requests.get(basic_server.url + "/studies", headers={"Origin": VIEWER}, timeout=10)
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "www-authenticate" in _names(refused.headers["Access-Control-Expose-Headers"])


def test_headers_that_steer_urls_or_describe_the_connection_are_not_allowed() -> None:
    allowed = _names(allow_headers(b"X-Forwarded-Host, Forwarded, Cookie, Host, X-Trace-Id, bad header").decode())
    assert allowed == {"authorization", "accept", "content-type", "x-trace-id"}
