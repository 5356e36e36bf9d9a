"""The in-process harness itself (tests/inprocess.py): a request that can
never finish is reported at once instead of hanging the run, and the
service it builds is the configured one."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests.inprocess import Client, InProcessServer


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
