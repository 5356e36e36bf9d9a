"""The shared vocabulary of dicomweb.auth: principals, errors, NoAuth, the factory."""

from __future__ import annotations

import pytest
import pytest_twisted

from dicomweb.auth import (
    ANONYMOUS,
    Authenticator,
    AuthError,
    AuthSettings,
    NoAuth,
    Principal,
    build_authenticator,
    require_write,
)
from dicomweb.twistedtypes import global_reactor

reactor = global_reactor()


@pytest_twisted.ensureDeferred
async def test_no_auth_lets_everyone_read_and_write() -> None:
    authn = build_authenticator("none", AuthSettings(), reactor)
    assert isinstance(authn, NoAuth) and isinstance(authn, Authenticator)
    for header in (None, b"Basic Zm9vOmJhcg==", b"garbage"):
        principal = await authn.authenticate(header)
        assert principal == ANONYMOUS == Principal("anonymous", frozenset({"read", "write"}))
        require_write(principal)


def test_require_write() -> None:
    require_write(Principal("w", frozenset({"read", "write"})))
    with pytest.raises(AuthError) as info:
        require_write(Principal("r", frozenset({"read"})))
    assert (info.value.status, info.value.challenge) == (403, None)
    assert info.value.reason == "write permission required"


def test_auth_error_statuses() -> None:
    assert AuthError(503, "identity provider unavailable").challenge is None
    with pytest.raises(ValueError):
        AuthError(500, "no")


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown auth kind"):
        build_authenticator("kerberos", AuthSettings(), reactor)


def test_settings_repr_hides_the_client_secret() -> None:
    text = repr(AuthSettings(oidc_client_id="svc", oidc_client_secret="hunter2-secret"))
    assert "hunter2-secret" not in text
    assert "oidc_client_id='svc'" in text
