"""Nothing secret reaches the log: passwords, tokens, client secrets.

Every event emitted while authenticating (successes, failures, IdP errors,
introspection) is captured with a twisted.logger observer and searched, both
formatted and as the raw event dict (which is what a JSON log would write).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import bcrypt
import pytest
import pytest_twisted
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.web.client import Agent

from dicomweb.auth import AuthError, AuthSettings, BasicAuthenticator, OidcAuthenticator
from dicomweb.twistedtypes import global_reactor
from tests.idp import (  # noqa: F401  # fixtures
    AUDIENCE,
    CLIENT_ID,
    CLIENT_SECRET,
    IdentityProvider,
    agent_fixture,
    bearer,
    idp_fixture,
    rsa_key,
)

reactor = global_reactor()

PASSWORD = "correct-horse-battery-staple"
WRONG_PASSWORD = "Tr0ub4dor&3-wrong"


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    captured: list[LogEvent] = []
    # Twisted calls any callable observer; a bound method cannot declare ILogObserver
    observer = cast(ILogObserver, captured.append)
    globalLogPublisher.addObserver(observer)
    yield captured
    globalLogPublisher.removeObserver(observer)


def log_text(events: list[LogEvent]) -> str:
    return "\n".join(f"{formatEvent(e)}\n{e!r}" for e in events)


async def attempt(authn: Any, header: bytes | None) -> str:
    """What the client would see: reason and challenge (must be clean too)."""
    try:
        principal = await authn.authenticate(header)
    except AuthError as e:
        return f"{e.status} {e.reason} {e.challenge}"
    return repr(principal)


@pytest_twisted.ensureDeferred
async def test_basic_passwords_never_logged(tmp_path: Path, events: list[LogEvent]) -> None:
    users = tmp_path / "users"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    users.write_text(f"alice:{hashed}:read,write\nbroken:line:with:too:many\n")
    authn = BasicAuthenticator(str(users), reactor)
    shown = []
    for user, password in [("alice", PASSWORD), ("alice", WRONG_PASSWORD),
                           (WRONG_PASSWORD, PASSWORD), ("alice", PASSWORD)]:
        encoded = base64.b64encode(f"{user}:{password}".encode())
        shown.append(await attempt(authn, b"Basic " + encoded))
        shown.append(await attempt(authn, b"Basic " + encoded + b"!"))
    text = log_text(events)
    assert "basic authentication failed" in text, "the observer saw our events"
    for secret in (PASSWORD, WRONG_PASSWORD, hashed, hashed[7:29]):
        assert secret not in text
        assert all(secret not in s for s in shown)


@pytest_twisted.ensureDeferred
async def test_tokens_and_client_secret_never_logged(idp: IdentityProvider, agent: Agent,
                                                     events: list[LogEvent]) -> None:
    settings = AuthSettings(oidc_issuer=idp.issuer, oidc_audience=AUDIENCE,
                            oidc_introspection="opaque", oidc_client_id=CLIENT_ID,
                            oidc_client_secret=CLIENT_SECRET)
    authn = OidcAuthenticator(settings, reactor, agent)
    tokens = [idp.token(), idp.token(key=rsa_key()), idp.token(aud="other"),
              idp.unsigned_token(), idp.hs256_public_key_token(), idp.opaque_token(),
              "f" * 64, idp.token()[:-5] + "AAAAA"]
    shown = [await attempt(authn, bearer(t)) for t in tokens]
    await idp.stop()  # and the IdP going away must not leak them either
    fresh = OidcAuthenticator(settings, reactor, agent)
    shown += [await attempt(fresh, bearer(t)) for t in tokens]
    text = log_text(events) + repr(settings)
    assert "loaded 2 signing keys" in text, "the observer saw our events"
    for token in tokens:
        for piece in [token, *token.split(".")]:
            if len(piece) > 16:  # the short "alg" header parts are not secret
                assert piece not in text
                assert all(piece not in s for s in shown)
    assert CLIENT_SECRET not in text
