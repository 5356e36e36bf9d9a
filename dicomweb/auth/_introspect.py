"""RFC 7662 token introspection, for identity providers with opaque tokens.

We POST the token to the introspection endpoint with our client id and
secret (HTTP basic).  Active answers are cached by a hash of the token until
the token's ``exp`` (at most ``ttl`` seconds), in a bounded LRU; inactive
answers are not cached, so a flood of junk tokens cannot evict good ones.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from ._http import IdpClient


class InactiveToken(Exception):
    """The IdP says the token is not (or no longer) active."""


class Introspector:
    """Asks the IdP about tokens; IdpUnavailable (from _http) when it cannot."""

    def __init__(self, http: IdpClient, endpoint: Callable[[], Awaitable[str]],
                 client_id: str, client_secret: str, cache_size: int, ttl: float,
                 wallclock: Callable[[], float] = time.time) -> None:
        self._http = http
        self._endpoint = endpoint
        self._auth = (client_id, client_secret)
        self._cache: OrderedDict[bytes, tuple[float, dict[str, Any]]] = OrderedDict()
        self._cache_size = cache_size
        self._ttl = ttl
        self._now = wallclock

    async def claims(self, token: str) -> dict[str, Any]:
        """The introspection answer for an active token; InactiveToken if not."""
        key = hashlib.sha256(token.encode("utf-8")).digest()
        cached = self._cached(key)
        if cached is not None:
            return cached
        answer = await self._http.post_form_json(
            await self._endpoint(),
            {"token": token, "token_type_hint": "access_token"}, self._auth)
        if answer.get("active") is not True:
            raise InactiveToken()
        self._remember(key, answer)
        return answer

    def _cached(self, key: bytes) -> dict[str, Any] | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[0] <= self._now():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return entry[1]

    def _remember(self, key: bytes, answer: dict[str, Any]) -> None:
        until = self._now() + self._ttl
        exp = answer.get("exp")
        if isinstance(exp, (int, float)):
            until = min(until, float(exp))
        self._cache[key] = (until, answer)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

