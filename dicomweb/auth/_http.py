"""Small JSON-over-HTTP calls to the identity provider, with treq.

Every failure (refused, timeout, non-200, oversized or non-JSON body) becomes
:class:`IdpUnavailable`: the caller answers 503, never 401, because the
client's credentials were not the problem.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

#: Twisted's Logger spells it .warn; ruff's G010 assumes stdlib logging.
log = Logger()

#: Discovery documents and key sets are a few kB; refuse to buffer megabytes.
MAX_BODY = 1 << 20


class IdpUnavailable(Exception):
    """The identity provider could not answer usefully; retry later."""


class _TooLarge(Exception):
    pass


class IdpClient:
    """GET and POST JSON to the IdP with a timeout and a body size cap."""

    def __init__(self, client: HTTPClient, reactor: IReactorTime, timeout: float) -> None:
        self._client = client
        self._reactor = reactor
        self._timeout = timeout

    async def get_json(self, url: str) -> dict[str, Any]:
        return await self._call("GET", url)

    async def post_form_json(self, url: str, form: dict[str, str],
                             auth: tuple[str, str] | None) -> dict[str, Any]:
        # The form carries the token: it is never part of any log message.
        return await self._call("POST", url, data=form, auth=auth)

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            pending = self._client.request(method, url, headers=Headers({b"Accept": [b"application/json"]}), **kwargs)
            # the timeout cancels the request until the response head arrives
            response = await pending.addTimeout(self._timeout, self._reactor)
            body = await _read_limited(response)
        except Exception as e:  # any failure means "unavailable"
            log.warn("identity provider {method} {url} failed: {error}",
                     method=method, url=url, error=type(e).__name__)
            raise IdpUnavailable(f"{method} {url} failed") from None
        if response.code != 200:
            log.warn("identity provider {method} {url} answered {code}",
                     method=method, url=url, code=response.code)
            raise IdpUnavailable(f"{method} {url} answered {response.code}")
        return _parse_object(body, method, url)


async def _read_limited(response: IResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > MAX_BODY:
            raise _TooLarge()
        chunks.append(data)

    await treq.collect(response, collect)
    return b"".join(chunks)


def _parse_object(body: bytes, method: str, url: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        log.warn("identity provider {method} {url}: answer is not a JSON object",
                 method=method, url=url)
        raise IdpUnavailable(f"{method} {url}: not a JSON object")
    return value
