"""The issuer's signing keys: fetched once, cached, refreshed carefully.

Requests only wait for the network when no key is known yet or a token names
an unknown ``kid``.  Refreshes for unknown kids are rate-limited
(``min_refresh``) so forged tokens cannot make us hammer the IdP; old keys
are refreshed in the background after ``max_age``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from jwt import PyJWK
from jwt.exceptions import PyJWKError
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._core import Clock
from ._http import IdpUnavailable

log = Logger()
_T = TypeVar("_T")

#: Which key type (and curve) each accepted algorithm needs.  Checked before
#: verifying so a token cannot pick an algorithm its key was not made for.
_ALG_KEY = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}


def key_fits(alg: str, jwk: dict[str, Any]) -> bool:
    """Does the JWK's type, curve and declared ``alg`` allow ``alg``?"""
    wanted = _ALG_KEY.get(alg)
    if wanted is None or jwk.get("kty") != wanted[0]:
        return False
    if wanted[1] is not None and jwk.get("crv") != wanted[1]:
        return False
    return jwk.get("alg") in (None, alg)


@dataclass(frozen=True)
class PublicKey:
    """A published signing key, parsed once when the key set is loaded."""

    jwk: dict[str, Any]
    #: The cryptography key object; one object serves every algorithm that
    #: fits (RS* and PS* share an RSA key), so nothing is parsed per request.
    key: Any

    def fits(self, alg: str) -> bool:
        return key_fits(alg, self.jwk)


def parse_jwks(document: dict[str, Any], algorithms: tuple[str, ...]) -> dict[str, PublicKey]:
    """Usable signing keys by kid (``""`` for a key without kid)."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise IdpUnavailable("key set has no keys list")
    keys: dict[str, PublicKey] = {}
    for jwk in entries:
        key = _parse_key(jwk, algorithms)
        if key is not None:
            keys[str(jwk.get("kid", ""))] = key
    return keys


def _parse_key(jwk: Any, algorithms: tuple[str, ...]) -> PublicKey | None:
    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
        return None
    # Only keys fitting an allowed algorithm: a symmetric ("oct") key has no
    # business in a public key set and never fits.
    alg = next((a for a in algorithms if key_fits(a, jwk)), None)
    if alg is None:
        return None
    try:
        return PublicKey(jwk, PyJWK(jwk, alg).key)
    except PyJWKError:
        return None


class KeyCache:
    """Signing keys by kid, with rate-limited refresh and failure backoff."""

    def __init__(self, fetch: Callable[[], Awaitable[dict[str, Any]]],
                 algorithms: tuple[str, ...], clock: Clock, min_refresh: float,
                 max_age: float, retry_interval: float) -> None:
        self._fetch = fetch
        self._algorithms = algorithms
        self._clock = clock
        self._min_refresh = min_refresh
        self._max_age = max_age
        self._retry_interval = retry_interval
        self._keys: dict[str, PublicKey] | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._failed = False
        # One fetch at a time: a burst of requests shares it.
        self._lock = DeferredLock()

    async def get(self, kid: str) -> PublicKey | None:
        """The key for ``kid``; None if unknown even after a permitted refresh.

        Raises :class:`IdpUnavailable` when keys are needed but cannot be had.
        """
        if self._keys is None:
            await self._locked(self._first_load)
        found = self._lookup(kid)
        if found is not None:
            self._maybe_refresh_in_background()
            return found
        return await self._locked(lambda: self._refresh_for(kid))

    def _lookup(self, kid: str) -> PublicKey | None:
        keys = self._keys or {}
        if kid == "" and len(keys) == 1:
            # A token without kid is fine when there is only one key to try.
            kid = next(iter(keys))
        return keys.get(kid)

    async def _locked(self, work: Callable[[], Awaitable[_T]]) -> _T:
        await self._lock.acquire()
        try:
            return await work()
        finally:
            self._lock.release()

    async def _first_load(self) -> None:
        if self._keys is not None:
            return  # another request loaded them while we waited
        if self._failed and self._since_attempt() < self._retry_interval:
            raise IdpUnavailable("identity provider recently unreachable")
        await self._load()

    async def _refresh_for(self, kid: str) -> PublicKey | None:
        found = self._lookup(kid)
        if found is not None:
            return found  # a refresh while we waited brought it
        limit = self._retry_interval if self._failed else self._min_refresh
        if self._since_attempt() < limit:
            if self._failed:
                raise IdpUnavailable("identity provider recently unreachable")
            return None
        log.info("token names an unknown signing key; refreshing the key set")
        await self._load()
        return self._lookup(kid)

    def _since_attempt(self) -> float:
        return self._clock.seconds() - self._attempted_at

    async def _load(self) -> None:
        self._attempted_at = self._clock.seconds()
        try:
            keys = parse_jwks(await self._fetch(), self._algorithms)
        except IdpUnavailable:
            self._failed = True
            raise
        self._failed = False
        self._keys = keys
        self._fetched_at = self._clock.seconds()
        log.info("loaded {count} signing keys", count=len(keys))

    def _maybe_refresh_in_background(self) -> None:
        now = self._clock.seconds()
        if now - self._fetched_at < self._max_age or self._since_attempt() < self._min_refresh:
            return
        if self._lock.locked:
            return
        d = Deferred.fromCoroutine(self._locked(self._load))
        d.addErrback(_ignore_unavailable)


def _ignore_unavailable(failure: Failure) -> Failure | None:
    """A failed background refresh keeps the old keys; _http logged why."""
    return None if isinstance(failure.value, IdpUnavailable) else failure
