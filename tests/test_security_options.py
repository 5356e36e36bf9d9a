"""The auth, OIDC and CORS options: command line, config file, environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.python import usage

from dicomweb.tap import Options
from tests.security_fixtures import write_users_file

ISSUER = "https://sso.example/realms/pacs"


def _parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


@pytest.fixture(autouse=True)
def _no_dicomweb_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DICOMWEB_"):
            monkeypatch.delenv(key)


def test_no_auth_is_the_default() -> None:
    settings = _parse().settings
    assert (settings.auth, settings.cors_origins) == ("none", ("*",))


def test_basic_auth_needs_a_readable_users_file(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="users-file"):
        _parse("--auth", "basic")
    with pytest.raises(usage.UsageError, match="users file"):
        _parse("--auth", "basic", "--users-file", str(tmp_path / "missing"))
    users = write_users_file(tmp_path / "users")
    settings = _parse("--auth", "basic", "--users-file", str(users), "--realm", "PACS").settings
    assert settings.auth_settings.users_file == str(users)
    assert settings.auth_settings.realm == "PACS"


def test_with_auth_a_non_loopback_address_is_allowed(tmp_path: Path) -> None:
    users = write_users_file(tmp_path / "users")
    assert _parse("--port", "tcp:5985", "--auth", "basic", "--users-file", str(users)).settings.port == "tcp:5985"
    with pytest.raises(usage.UsageError, match="allow-remote"):
        _parse("--port", "tcp:5985", "--auth", "none")


def test_oidc_options_map_onto_auth_settings() -> None:
    settings = _parse("--auth", "oidc", "--oidc-issuer", ISSUER, "--oidc-audience", "dicomweb",
                      "--oidc-write-role", "pacs-writer", "--oidc-roles-claim", "resource_access.pacs.roles",
                      "--oidc-required-scope", "dicom.read", "--oidc-required-scope", "a,b").settings
    auth = settings.auth_settings
    assert (auth.oidc_issuer, auth.oidc_audience, auth.oidc_write_role, auth.oidc_roles_claim) == (
        ISSUER, "dicomweb", "pacs-writer", "resource_access.pacs.roles")
    assert auth.oidc_required_scopes == ("dicom.read", "a", "b")


def test_keycloak_settings_are_a_way_to_name_the_issuer() -> None:
    auth = _parse("--auth", "oidc", "--keycloak-url", "https://sso.example/", "--keycloak-realm",
                  "pacs").settings.auth_settings
    assert (auth.keycloak_auth_server_url, auth.keycloak_realm) == ("https://sso.example/", "pacs")
    with pytest.raises(usage.UsageError, match="issuer"):
        _parse("--auth", "oidc")


def test_the_client_secret_comes_from_a_file_or_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-from-file\n")
    common = ("--auth", "oidc", "--oidc-issuer", ISSUER, "--oidc-introspection", "opaque",
              "--oidc-client-id", "dicomweb")
    settings = _parse(*common, "--oidc-client-secret-file", str(secret)).settings
    assert settings.auth_settings.oidc_client_secret == "s3cr3t-from-file"
    assert "s3cr3t" not in repr(settings)
    with pytest.raises(usage.UsageError, match="client id and secret"):
        _parse(*common)
    monkeypatch.setenv("DICOMWEB_OIDC_CLIENT_SECRET", "s3cr3t-from-env")
    assert _parse(*common).settings.auth_settings.oidc_client_secret == "s3cr3t-from-env"
    with pytest.raises(usage.UsageError, match="not both"):
        _parse(*common, "--oidc-client-secret-file", str(secret))


def test_the_config_file_takes_lists_and_the_command_line_wins(tmp_path: Path) -> None:
    config = tmp_path / "dicomweb.toml"
    config.write_text(f'auth = "oidc"\noidc-issuer = "{ISSUER}"\n'
                      'oidc-required-scope = ["dicom.read", "dicom.write"]\n'
                      'cors-origin = ["https://viewer.example", "https://slicer.example"]\n')
    settings = _parse("--config", str(config)).settings
    assert settings.auth == "oidc"
    assert settings.auth_settings.oidc_required_scopes == ("dicom.read", "dicom.write")
    assert settings.cors_origins == ("https://viewer.example", "https://slicer.example")
    assert _parse("--config", str(config), "--cors-origin", "https://ohif.example").settings.cors_origins == (
        "https://ohif.example",)


def test_bad_values_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="none, basic, oidc"):
        _parse("--auth", "kerberos")
    with pytest.raises(usage.UsageError, match="introspection"):
        _parse("--auth", "oidc", "--oidc-issuer", ISSUER, "--oidc-introspection", "sometimes")
    with pytest.raises(usage.UsageError, match="CA file"):
        _parse("--auth", "oidc", "--oidc-issuer", ISSUER, "--oidc-ca-file", str(tmp_path / "none.pem"))
