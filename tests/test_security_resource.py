"""SecureResource in process: the paths the real-server tests cannot reach
easily (authentication still pending when the client leaves, an
authenticator bug, 503, HEAD)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from dicomweb.auth import AuthError, NoAuth, Principal
from dicomweb.store.base import Spool
from dicomweb.web.request import request_factory
from dicomweb.web.security import SecureResource, principal_of

READER = Principal("rita", frozenset({"read"}))


class _Pending:
    """An authenticator whose answer the test gives later."""

    def __init__(self) -> None:
        self.answer: Deferred[Principal] = Deferred()
        self.seen: list[bytes | None] = []

    async def authenticate(self, authorization: bytes | None) -> Principal:
        self.seen.append(authorization)
        return await self.answer

    def challenge(self) -> str:
        return 'Basic realm="t"'


class _App(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rendered = 0

    def render(self, request: DummyRequest) -> bytes:
        self.rendered += 1
        return b"app"


def _request(method: bytes = b"GET", path: bytes = b"/studies") -> Any:
    """A DummyRequest (typed Any: it stands in for a server Request)."""
    request: Any = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = method
    request.path = path
    request.requestHeaders.setRawHeaders(b"authorization", [b"Basic c2VjcmV0LXRva2Vu"])
    return request


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    captured: list[LogEvent] = []
    # Twisted calls any callable observer; a bound method cannot declare ILogObserver
    observer = cast(ILogObserver, captured.append)
    globalLogPublisher.addObserver(observer)
    yield captured
    globalLogPublisher.removeObserver(observer)


def test_the_app_renders_only_after_authentication_succeeds() -> None:
    auth, app = _Pending(), _App()
    request = _request()
    assert SecureResource(app, auth).render(request) is NOT_DONE_YET
    assert app.rendered == 0 and auth.seen == [b"Basic c2VjcmV0LXRva2Vu"]
    auth.answer.callback(READER)
    assert app.rendered == 1 and principal_of(request) == READER
    assert b"".join(request.written) == b"app" and request.finished


def test_a_read_only_principal_may_not_post() -> None:
    auth, app = _Pending(), _App()
    request = _request(b"POST")
    SecureResource(app, auth).render(request)
    auth.answer.callback(READER)
    assert (request.responseCode, app.rendered) == (403, 0)


def test_nothing_is_rendered_for_a_client_that_left_during_authentication() -> None:
    auth, app = _Pending(), _App()
    request = _request()
    SecureResource(app, auth).render(request)
    request._disconnected = True
    auth.answer.callback(READER)
    assert app.rendered == 0 and request.written == []


def test_an_unavailable_identity_provider_is_503_with_retry_after() -> None:
    auth = _Pending()
    request = _request()
    SecureResource(_App(), auth).render(request)
    auth.answer.errback(AuthError(503, "identity provider unavailable"))
    assert request.responseCode == 503
    assert request.responseHeaders.getRawHeaders(b"retry-after") == [b"5"]


def test_a_refused_head_has_headers_and_no_body() -> None:
    auth = _Pending()
    request = _request(b"HEAD")
    SecureResource(_App(), auth).render(request)
    auth.answer.errback(AuthError(401, "authentication required", 'Basic realm="t"'))
    assert request.responseCode == 401 and request.written == []
    assert request.responseHeaders.getRawHeaders(b"www-authenticate") == [b'Basic realm="t"']


def test_an_authenticator_bug_is_500_and_its_message_is_not_logged(events: list[LogEvent]) -> None:
    auth = _Pending()
    request = _request()
    SecureResource(_App(), auth).render(request)
    auth.answer.errback(RuntimeError("could not parse secret-token"))
    assert request.responseCode == 500
    logged = " ".join(formatEvent(e) for e in events)
    assert "RuntimeError" in logged and "secret-token" not in logged


@pytest.mark.parametrize(("authenticator", "header", "kept"), [
    (_Pending(), None, False),  # will be refused: keep nothing
    (_Pending(), b"Basic c2VjcmV0LXRva2Vu", True),
    (NoAuth(), None, True),
])
def test_a_body_is_spooled_only_when_it_may_be_used(tmp_path: Path, authenticator: Any,
                                                    header: bytes | None, kept: bool) -> None:
    site = Site(SecureResource(_App(), authenticator))
    channel = DummyChannel()
    channel.site = site
    spooled: list[IO[bytes]] = []

    class Recorded(Spool):
        def temporary_file(self) -> IO[bytes]:
            spooled.append(super().temporary_file())
            return spooled[-1]

    request = request_factory(1 << 30, Recorded(str(tmp_path)))(channel)
    if header is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [header])
    request.gotLength(10 << 20)
    request.handleContentChunk(b"x" * 1000)
    assert bool(spooled) is kept
    assert request.content is not None
    assert request.content.tell() == (1000 if kept else 0)
