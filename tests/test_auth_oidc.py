"""Bearer JWT validation against a real local identity provider (dicomweb.auth.oidc)."""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.web.client import Agent

from dicomweb.auth import (
    AuthError,
    AuthSettings,
    OidcAuthenticator,
    Principal,
    build_authenticator,
)
from dicomweb.twistedtypes import global_reactor
from tests.idp import (  # noqa: F401  # fixtures
    AUDIENCE,
    CLIENT_ID,
    CLIENT_SECRET,
    IdentityProvider,
    agent_fixture,
    bearer,
    ec_key,
    fake_clock_fixture,
    idp_fixture,
    rsa_key,
)

reactor = global_reactor()

BARE = 'Bearer realm="dicomweb"'


def invalid(description: str) -> str:
    return f'{BARE}, error="invalid_token", error_description="{description}"'


def settings_for(idp: IdentityProvider, **overrides: Any) -> AuthSettings:
    base = AuthSettings(oidc_issuer=idp.issuer, oidc_audience=AUDIENCE,
                        oidc_roles_claim="realm_access.roles")
    return dataclasses.replace(base, **overrides)


def make(idp: IdentityProvider, agent: Agent, clock: Clock | None = None,
         **overrides: Any) -> OidcAuthenticator:
    return OidcAuthenticator(settings_for(idp, **overrides), reactor, agent, clock=clock)


async def outcome(authn: OidcAuthenticator, authorization: bytes | None) -> Principal | AuthError:
    try:
        return await authn.authenticate(authorization)
    except AuthError as e:
        return e


def _wrong_key_same_kid(idp: IdentityProvider) -> bytes:
    forger = rsa_key()
    return bearer(idp.token(key=forger, kid=idp.rsa.kid))


def _es256_header_on_rsa_key(idp: IdentityProvider) -> bytes:
    # An EC signature claiming the RSA key's kid: alg must fit the key type.
    return bearer(idp.token(key=idp.ec, kid=idp.rsa.kid))


#: (case, header maker, status, challenge)
REFUSED: list[tuple[str, Callable[[IdentityProvider], bytes | None], int, str]] = [
    ("no credentials", lambda idp: None, 401, BARE),
    ("basic credentials", lambda idp: b"Basic YWxpY2U6cHc=", 401, BARE),
    ("bearer without token", lambda idp: b"Bearer", 401, invalid("malformed bearer token")),
    ("token with spaces", lambda idp: b"Bearer a b c", 401, invalid("malformed bearer token")),
    ("not a JWT", lambda idp: b"Bearer abc.def.ghi", 401, invalid("malformed token")),
    ("bad signature", _wrong_key_same_kid, 401, invalid("bad signature")),
    ("expired", lambda idp: bearer(idp.token(exp=int(time.time()) - 120)), 401,
     invalid("token expired")),
    ("not yet valid", lambda idp: bearer(idp.token(nbf=int(time.time()) + 120)), 401,
     invalid("token not yet valid")),
    ("wrong issuer", lambda idp: bearer(idp.token(iss="https://evil.example/realms/test")), 401,
     invalid("wrong issuer")),
    ("wrong audience", lambda idp: bearer(idp.token(aud="another-service")), 401,
     invalid("wrong audience")),
    ("no exp", lambda idp: bearer(idp.token(exp=None)), 401, invalid("required claim missing")),
    ("alg none", lambda idp: bearer(idp.unsigned_token()), 401, invalid("unsupported algorithm")),
    ("HS256 with the public key", lambda idp: bearer(idp.hs256_public_key_token()), 401,
     invalid("unsupported algorithm")),
    ("alg does not fit key", _es256_header_on_rsa_key, 401,
     invalid("algorithm does not fit the key")),
    ("unknown kid", lambda idp: bearer(idp.token(key=rsa_key())), 401,
     invalid("unknown signing key")),
]


@pytest.mark.parametrize(("case", "make_header", "status", "challenge"), REFUSED,
                         ids=[c[0] for c in REFUSED])
@pytest_twisted.ensureDeferred
async def test_refused(idp: IdentityProvider, agent: Agent, case: str,
                       make_header: Callable[[IdentityProvider], bytes | None],
                       status: int, challenge: str) -> None:
    result = await outcome(make(idp, agent), make_header(idp))
    assert isinstance(result, AuthError), case
    assert (result.status, result.challenge) == (status, challenge)


ROLES: dict[str, Any] = {"realm_access": {"roles": ["write", "offline_access"]}}

#: (case, token maker, expected principal)
ACCEPTED: list[tuple[str, Callable[[IdentityProvider], str], Principal]] = [
    ("RS256 read-only", lambda idp: idp.token(), Principal("alice", frozenset({"read"}))),
    ("ES256", lambda idp: idp.token(key=idp.ec), Principal("alice", frozenset({"read"}))),
    ("write role", lambda idp: idp.token(**ROLES), Principal("alice", frozenset({"read", "write"}))),
    ("write scope", lambda idp: idp.token(scope="openid write"),
     Principal("alice", frozenset({"read", "write"}))),
    ("scp list", lambda idp: idp.token(scope=None, scp=["write"]),
     Principal("alice", frozenset({"read", "write"}))),
    ("expired within leeway", lambda idp: idp.token(exp=int(time.time()) - 10),
     Principal("alice", frozenset({"read"}))),
    ("audience list", lambda idp: idp.token(aud=["account", AUDIENCE]),
     Principal("alice", frozenset({"read"}))),
    ("name falls back to sub", lambda idp: idp.token(preferred_username=None),
     Principal("user-1", frozenset({"read"}))),
]


@pytest.mark.parametrize(("case", "make_token", "expected"), ACCEPTED,
                         ids=[c[0] for c in ACCEPTED])
@pytest_twisted.ensureDeferred
async def test_accepted(idp: IdentityProvider, agent: Agent, case: str,
                        make_token: Callable[[IdentityProvider], str],
                        expected: Principal) -> None:
    assert await make(idp, agent).authenticate(bearer(make_token(idp))) == expected


@pytest_twisted.ensureDeferred
async def test_required_scope_and_role_give_403_insufficient_scope(
        idp: IdentityProvider, agent: Agent) -> None:
    authn = make(idp, agent, oidc_required_scopes=("dicom.read",),
                 oidc_required_roles=("radiology",))
    result = await outcome(authn, bearer(idp.token()))
    assert isinstance(result, AuthError)
    assert result.status == 403
    assert result.challenge == (f'{BARE}, error="insufficient_scope", '
                                'error_description="missing required scope", scope="dicom.read"')
    result = await outcome(authn, bearer(idp.token(scope="dicom.read")))
    assert isinstance(result, AuthError) and result.reason == "missing required role"
    ok = await authn.authenticate(bearer(idp.token(
        scope="dicom.read", realm_access={"roles": ["radiology"]})))
    assert ok.roles == frozenset({"read"})


@pytest_twisted.ensureDeferred
async def test_keys_fetched_once_for_many_requests(idp: IdentityProvider, agent: Agent) -> None:
    authn = make(idp, agent)
    token = bearer(idp.token())
    # A burst before any key is cached shares one fetch ...
    await gatherResults([Deferred.fromCoroutine(authn.authenticate(token)) for _ in range(20)])
    # ... and later requests make no network call at all.
    for _ in range(50):
        await authn.authenticate(bearer(idp.token(key=idp.ec)))
    assert (idp.discovery_fetches, idp.jwks_fetches) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_unknown_kid_refreshes_once_rate_limited_then_accepts_rotated_key(
        idp: IdentityProvider, agent: Agent, fake_clock: Clock) -> None:
    authn = make(idp, agent, fake_clock)
    await authn.authenticate(bearer(idp.token()))
    assert idp.jwks_fetches == 1
    fake_clock.advance(31)
    new_key = idp.rotate(keep_old=True)
    # The new kid is unknown to the cache: one refresh, then accepted.
    assert (await authn.authenticate(bearer(idp.token(key=new_key)))).name == "alice"
    assert idp.jwks_fetches == 2
    # Forged kids right after cannot make us fetch again (rate limit) ...
    for _ in range(5):
        result = await outcome(authn, bearer(idp.token(key=rsa_key())))
        assert isinstance(result, AuthError) and result.reason == "unknown signing key"
    assert idp.jwks_fetches == 2
    # ... and a key rotated in within the rate-limit window waits for it.
    newer = idp.rotate()
    result = await outcome(authn, bearer(idp.token(key=newer)))
    assert isinstance(result, AuthError) and result.reason == "unknown signing key"
    fake_clock.advance(31)
    assert (await authn.authenticate(bearer(idp.token(key=newer)))).name == "alice"
    assert idp.jwks_fetches == 3
    # The withdrawn key is no longer trusted.
    result = await outcome(authn, bearer(idp.token(key=new_key)))
    assert isinstance(result, AuthError) and result.status == 401


@pytest_twisted.ensureDeferred
async def test_old_keys_refreshed_in_background(idp: IdentityProvider, agent: Agent,
                                               fake_clock: Clock) -> None:
    authn = make(idp, agent, fake_clock, oidc_jwks_max_age=600)
    token = bearer(idp.token())
    await authn.authenticate(token)
    fake_clock.advance(601)
    await authn.authenticate(token)  # answered from the cache, refresh started
    for _ in range(50):
        if idp.jwks_fetches == 2:
            break
        await deferLater(reactor, 0.01)
    assert idp.jwks_fetches == 2


@pytest_twisted.ensureDeferred
async def test_unreachable_idp_gives_503_and_recovers(idp: IdentityProvider, agent: Agent,
                                                      fake_clock: Clock) -> None:
    authn = make(idp, agent, fake_clock)
    token = bearer(idp.token())
    port = idp.port_number
    await idp.stop()
    result = await outcome(authn, token)
    assert isinstance(result, AuthError)
    assert (result.status, result.challenge) == (503, None)
    idp.start(port)
    # Within the retry interval we do not even try.
    result = await outcome(authn, token)
    assert isinstance(result, AuthError) and result.status == 503
    assert idp.discovery_fetches == 0
    fake_clock.advance(6)
    assert (await authn.authenticate(token)).name == "alice"


@pytest_twisted.ensureDeferred
async def test_hanging_idp_times_out_with_503(idp: IdentityProvider, agent: Agent) -> None:
    idp.hang = True
    authn = make(idp, agent, oidc_http_timeout=0.2)
    result = await outcome(authn, bearer(idp.token()))
    assert isinstance(result, AuthError) and result.status == 503


@pytest_twisted.ensureDeferred
async def test_keycloak_settings_map_onto_the_issuer(idp: IdentityProvider, agent: Agent) -> None:
    settings = AuthSettings(keycloak_auth_server_url=idp.base_url + "/", keycloak_realm="test",
                            oidc_audience=AUDIENCE)
    authn = build_authenticator("oidc", settings, reactor, agent)
    principal = await authn.authenticate(bearer(idp.token(**ROLES)))
    assert principal.can_write, "Keycloak defaults the roles claim to realm_access.roles"


@pytest_twisted.ensureDeferred
async def test_introspection_of_opaque_tokens(idp: IdentityProvider, agent: Agent) -> None:
    authn = make(idp, agent, oidc_introspection="opaque", oidc_client_id=CLIENT_ID,
                 oidc_client_secret=CLIENT_SECRET)
    opaque = idp.opaque_token(**ROLES)
    for _ in range(3):
        assert (await authn.authenticate(bearer(opaque))).can_write
    assert idp.introspections == 1, "an active answer is cached until the token expires"
    result = await outcome(authn, bearer("0123456789abcdef" * 4))
    assert isinstance(result, AuthError) and result.challenge == invalid("token is not active")
    # JWTs are still checked locally in "opaque" mode.
    await authn.authenticate(bearer(idp.token()))
    assert idp.introspections == 2


@pytest_twisted.ensureDeferred
async def test_introspection_always_checks_claims(idp: IdentityProvider, agent: Agent) -> None:
    authn = make(idp, agent, oidc_introspection="always", oidc_client_id=CLIENT_ID,
                 oidc_client_secret=CLIENT_SECRET)
    wrong_aud = idp.opaque_token(aud="someone-else")
    result = await outcome(authn, bearer(wrong_aud))
    assert isinstance(result, AuthError) and result.challenge == invalid("wrong audience")
    expired = idp.opaque_token(exp=int(time.time()) - 100)
    result = await outcome(authn, bearer(expired))
    assert isinstance(result, AuthError) and result.challenge == invalid("token expired")
    # A JWT the IdP does not know as active is refused even with a good signature.
    result = await outcome(authn, bearer(idp.token()))
    assert isinstance(result, AuthError) and result.challenge == invalid("token is not active")


@pytest_twisted.ensureDeferred
async def test_introspection_with_bad_client_credentials_is_503(
        idp: IdentityProvider, agent: Agent) -> None:
    authn = make(idp, agent, oidc_introspection="always", oidc_client_id=CLIENT_ID,
                 oidc_client_secret="wrong")
    result = await outcome(authn, bearer(idp.opaque_token()))
    assert isinstance(result, AuthError) and result.status == 503


@pytest_twisted.ensureDeferred
async def test_discovery_naming_another_issuer_is_refused(idp: IdentityProvider,
                                                          agent: Agent) -> None:
    # The same IdP reached under another name: discovery's issuer will not match.
    other = idp.issuer.replace("127.0.0.1", "localhost")
    authn = OidcAuthenticator(AuthSettings(oidc_issuer=other, oidc_audience=AUDIENCE),
                              reactor, agent)
    result = await outcome(authn, bearer(idp.token()))
    assert isinstance(result, AuthError) and result.status == 503


@pytest_twisted.ensureDeferred
async def test_symmetric_keys_in_the_jwks_are_never_used(idp: IdentityProvider,
                                                        agent: Agent) -> None:
    secret = b"0" * 32
    idp.extra_jwks.append({"kty": "oct", "kid": "oct-1", "alg": "HS256",
                           "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode()})
    authn = make(idp, agent)
    hs256 = jwt.encode(idp.claims(), secret, algorithm="HS256", headers={"kid": "oct-1"})
    result = await outcome(authn, bearer(hs256))
    assert isinstance(result, AuthError) and result.reason == "unsupported algorithm"
    # Even naming an allowed algorithm, the symmetric key is not in our key set.
    rs256 = idp.token(kid="oct-1")
    result = await outcome(authn, bearer(rs256))
    assert isinstance(result, AuthError) and result.reason == "unknown signing key"


@pytest_twisted.ensureDeferred
async def test_algorithm_allow_list_is_configurable(idp: IdentityProvider, agent: Agent) -> None:
    result = await outcome(make(idp, agent, oidc_algorithms=("RS256",)),
                           bearer(idp.token(key=idp.ec)))
    assert isinstance(result, AuthError) and result.reason == "unsupported algorithm"


@pytest.mark.parametrize("overrides", [
    {"oidc_algorithms": ("RS256", "HS256")},
    {"oidc_algorithms": ("none",)},
    {"oidc_algorithms": ()},
    {"oidc_introspection": "sometimes"},
    {"oidc_introspection": "always"},
    {"oidc_issuer": None},
    {"keycloak_realm": "test"},
    {"oidc_issuer": "https://a.example", "keycloak_realm": "x",
     "keycloak_auth_server_url": "https://b.example"},
])
def test_bad_settings_refused_at_start(overrides: dict[str, Any]) -> None:
    settings = dataclasses.replace(AuthSettings(oidc_issuer="https://idp.example"), **overrides)
    with pytest.raises(ValueError):
        build_authenticator("oidc", settings, reactor)
