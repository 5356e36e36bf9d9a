"""The in-process harness itself (tests/inprocess.py): a request that can
never finish is reported at once instead of hanging the run, the clock
moves only when a test lets it, and the service it builds is the
configured one."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests.idp import AUDIENCE, _IdpResource
from tests.inprocess import Client, InProcessServer
from tests.security_fixtures import INPROCESS_IDP_PORT, _Provider, bearer


class _Silent(Resource):
    isLeaf = True

    def render_GET(self, request: object) -> int:
        return NOT_DONE_YET  # never answers


def test_a_request_that_can_never_finish_fails_at_once(inproc: InProcessServer) -> None:
    inproc.network.listen("127.0.0.1", 9999, Site(_Silent(), reactor=inproc.reactor))
    with pytest.raises(AssertionError, match="stuck"):
        inproc.client.get("http://127.0.0.1:9999/")


def test_a_closed_port_refuses_the_connection(http: Client) -> None:
    with pytest.raises(Exception, match="Connection was refused"):
        http.get("http://127.0.0.1:1/health")


def test_the_options_given_are_the_service_built(tmp_path: Path) -> None:
    with InProcessServer(str(tmp_path / "data"), "--base-url", "https://pacs.example/dicomweb") as server:
        assert server.settings.base_url == "https://pacs.example/dicomweb"
        assert (tmp_path / "data" / "index.sqlite3").exists()
        response = server.client.get("/health")
        assert (response.status_code, response.text) == (200, "ok\n")


def test_time_passes_only_when_a_test_lets_it(tmp_path: Path) -> None:
    """An identity provider that never answers: the request waits for the
    authenticator's timeout (10 s of the manual clock, no real waiting) and
    gets 503 with Retry-After; once the provider answers, so does the server."""
    provider = _Provider()
    provider.port_number = INPROCESS_IDP_PORT
    provider.hang = True
    with InProcessServer(str(tmp_path / "data"), "--auth", "oidc", "--oidc-issuer", provider.issuer,
                         "--oidc-audience", AUDIENCE) as server:
        server.network.listen("127.0.0.1", INPROCESS_IDP_PORT, Site(_IdpResource(provider), reactor=server.reactor))
        token = bearer(provider.token(roles=["read"]))
        with pytest.raises(AssertionError, match="stuck"):
            server.client.get("/studies", headers=token)
        started = server.reactor.seconds()
        response = server.client.get("/studies", headers=token, let_time_pass=True)
        assert (response.status_code, response.headers["Retry-After"]) == (503, "5")
        assert server.reactor.seconds() - started >= 10
        provider.hang = False
        server.reactor.advance(60)
        assert server.client.get("/studies", headers=token).status_code == 200
