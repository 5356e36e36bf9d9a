"""HTTP basic authentication against a bcrypt users file (dicomweb.auth.basic)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
from pathlib import Path

import bcrypt
import pytest
import pytest_twisted

from dicomweb.auth import (
    AuthError,
    AuthSettings,
    BasicAuthenticator,
    Principal,
    build_authenticator,
)
from dicomweb.auth import basic as basic_module
from dicomweb.twistedtypes import global_reactor

reactor = global_reactor()

CHALLENGE = 'Basic realm="dicomweb"'
PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "carol": "carol-pw-3"}


def bcrypt_hash(password: str) -> str:
    # rounds=4: the minimum, so the suite stays fast.
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def htpasswd_hash(password: str) -> str:
    """What ``htpasswd -B`` writes: the same hash under PHP's $2y$ prefix."""
    return "$2y$" + bcrypt_hash(password)[4:]


def header(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(
        "# dicomweb users\n"
        "\n"
        f"alice:{bcrypt_hash(PASSWORDS['alice'])}\n"
        f"bob:{bcrypt_hash(PASSWORDS['bob'])}:read,write\n"
        f"carol:{htpasswd_hash(PASSWORDS['carol'])}\n"
        "broken line without hash\n"
        "md5user:$apr1$abcdefgh$0123456789012345678901\n"
    )
    return path


@pytest.fixture
def authn(users_file: Path) -> BasicAuthenticator:
    return BasicAuthenticator(str(users_file), reactor)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads each bcrypt check ran in (and how many ran)."""
    seen: list[str] = []
    real = basic_module._checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        seen.append(threading.current_thread().name)
        return real(password, hashed)

    monkeypatch.setattr(basic_module, "_checkpw", spy)
    return seen


async def outcome(authn: BasicAuthenticator, authorization: bytes | None) -> Principal | AuthError:
    try:
        return await authn.authenticate(authorization)
    except AuthError as e:
        return e


REFUSED = [
    ("no credentials", None),
    ("empty header", b""),
    ("malformed base64", b"Basic !!!not-base64!!!"),
    ("no colon", b"Basic " + base64.b64encode(b"alice")),
    ("empty user", header("", "x")),
    ("other scheme", b"Bearer abc.def.ghi"),
    ("wrong password", header("alice", "wrong")),
    ("empty password", header("alice", "")),
    ("another user's password", header("alice", PASSWORDS["bob"])),
    ("unknown user", header("mallory", "whatever")),
    ("non-bcrypt line skipped", header("md5user", "x")),
    ("not utf-8", b"Basic " + base64.b64encode(b"\xff\xfe:pw")),
]


@pytest.mark.parametrize(("case", "authorization"), REFUSED, ids=[c[0] for c in REFUSED])
@pytest_twisted.ensureDeferred
async def test_refused(authn: BasicAuthenticator, case: str, authorization: bytes | None) -> None:
    result = await outcome(authn, authorization)
    assert isinstance(result, AuthError), case
    assert (result.status, result.challenge) == (401, CHALLENGE)


ACCEPTED = [
    ("read-only user", "alice", frozenset({"read"})),
    ("read-write user", "bob", frozenset({"read", "write"})),
    ("htpasswd -B ($2y$) hash", "carol", frozenset({"read"})),
]


@pytest.mark.parametrize(("case", "user", "roles"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
@pytest_twisted.ensureDeferred
async def test_accepted(authn: BasicAuthenticator, case: str, user: str,
                        roles: frozenset[str]) -> None:
    principal = await authn.authenticate(header(user, PASSWORDS[user]))
    assert principal == Principal(user, roles)
    assert principal.can_write == ("write" in roles)


@pytest_twisted.ensureDeferred
async def test_scheme_is_case_insensitive(authn: BasicAuthenticator) -> None:
    principal = await authn.authenticate(b"bAsIc " + header("alice", PASSWORDS["alice"])[6:])
    assert principal.name == "alice"


@pytest_twisted.ensureDeferred
async def test_cached_success_never_admits_a_wrong_password(
        authn: BasicAuthenticator, checks: list[str]) -> None:
    """A cache keyed by name alone would admit any password after one good login."""
    good = header("alice", PASSWORDS["alice"])
    await authn.authenticate(good)
    await authn.authenticate(good)
    assert len(checks) == 1, "the second identical request is served from the cache"
    result = await outcome(authn, header("alice", "wrong"))
    assert isinstance(result, AuthError) and result.status == 401
    assert len(checks) == 2, "a different password is checked with bcrypt again"


@pytest_twisted.ensureDeferred
async def test_bcrypt_runs_off_the_reactor_thread_even_for_unknown_users(
        authn: BasicAuthenticator, checks: list[str]) -> None:
    await outcome(authn, header("mallory", "guess"))
    await outcome(authn, header("alice", "guess"))
    assert len(checks) == 2, "an unknown user costs a bcrypt check like a known one"
    assert threading.main_thread().name not in checks


@pytest_twisted.ensureDeferred
async def test_users_file_reloaded_when_it_changes(users_file: Path, authn: BasicAuthenticator) -> None:
    old = header("alice", PASSWORDS["alice"])
    assert (await authn.authenticate(old)).roles == frozenset({"read"})
    users_file.write_text(f"alice:{bcrypt_hash('new-pw')}:read,write\n")
    st = users_file.stat()
    os.utime(users_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    result = await outcome(authn, old)
    assert isinstance(result, AuthError), "the cached success died with the old file"
    assert (await authn.authenticate(header("alice", "new-pw"))).can_write


@pytest_twisted.ensureDeferred
async def test_unreadable_reload_keeps_previous_users(users_file: Path,
                                                      authn: BasicAuthenticator) -> None:
    users_file.unlink()
    principal = await authn.authenticate(header("bob", PASSWORDS["bob"]))
    assert principal.can_write


@pytest_twisted.ensureDeferred
async def test_long_passwords_count_72_bytes_like_htpasswd(tmp_path: Path) -> None:
    password = "p" * 100
    path = tmp_path / "users"
    path.write_text(f"long:{bcrypt_hash(password[:72])}\n")
    authn = BasicAuthenticator(str(path), reactor)
    assert (await authn.authenticate(header("long", password))).name == "long"


@pytest.fixture
def htpasswd_file(tmp_path: Path) -> Path:
    """A users file written by Apache's own tool (apache2-utils)."""
    if shutil.which("htpasswd") is None:
        pytest.skip("apache2-utils not installed")
    path = tmp_path / "users"
    subprocess.run(["htpasswd", "-B", "-C", "4", "-b", "-c", str(path), "dave", "dave-pw"],
                   check=True, capture_output=True)
    erin = subprocess.run(["htpasswd", "-B", "-C", "4", "-b", "-n", "erin", "erin-pw"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with path.open("a") as fp:
        fp.write(erin + ":read,write\n")
    return path


@pytest_twisted.ensureDeferred
async def test_real_htpasswd_output(htpasswd_file: Path) -> None:
    authn = BasicAuthenticator(str(htpasswd_file), reactor)
    assert (await authn.authenticate(header("dave", "dave-pw"))).roles == frozenset({"read"})
    assert (await authn.authenticate(header("erin", "erin-pw"))).can_write


def test_custom_realm_and_build(users_file: Path) -> None:
    authn = build_authenticator("basic", AuthSettings(users_file=str(users_file), realm="PACS \"A\""),
                                reactor)
    assert authn.challenge() == 'Basic realm="PACS \\"A\\""'


def test_build_needs_a_readable_users_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="users file"):
        build_authenticator("basic", AuthSettings(), reactor)
    with pytest.raises(OSError):
        build_authenticator("basic", AuthSettings(users_file=str(tmp_path / "missing")), reactor)


def test_parse_users_roles() -> None:
    users = basic_module.parse_users(
        f"a:{bcrypt_hash('x')}:write\n"
        f"b:{bcrypt_hash('x')}: read , write \n"
        f"c:{bcrypt_hash('x')}:admin\n"
        "d:$2b$99$" + "a" * 53 + "\n"
    )
    assert users["a"].roles == users["b"].roles == frozenset({"read", "write"})
    assert users["c"].roles == frozenset({"read"})
    assert "d" not in users, "an invalid cost is rejected at load, not at login"
