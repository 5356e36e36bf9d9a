"""The option table (``dicomweb.options.OPTIONS``) and what is derived from it:
twistd's Options, the config file and environment loaders, ``Settings``, and
README's option tables."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.python import usage

from dicomweb.auth import AuthSettings
from dicomweb.config import Settings, env_values, load_settings, resolve
from dicomweb.options import (
    AUTH,
    OPTIONS,
    Option,
    at_least,
    text,
    usage_flags,
    usage_handlers,
    usage_parameters,
)
from dicomweb.tap import Options
from tests.server import REPO

NO_ENV: dict[str, str] = {}


def _record(group: str) -> type:
    return AuthSettings if group == AUTH else Settings


# -- Settings is the table's -----------------------------------------------------


def test_every_settings_field_is_filled_by_exactly_one_option() -> None:
    filled = [o.attribute for o in OPTIONS if not o.group and o.attribute]
    assert len(filled) == len(set(filled))
    fields = {f.name for f in dataclasses.fields(Settings)} - {"auth_settings"}
    assert set(filled) == fields, "add the Option to dicomweb/options.py, or the field to Settings"


@pytest.mark.parametrize("opt", [o for o in OPTIONS if o.attribute], ids=lambda o: o.name)
def test_the_table_default_is_the_dataclass_default(opt: Option) -> None:
    record = _record(opt.group)
    assert opt.attribute in {f.name for f in dataclasses.fields(record)}, f"{record.__name__} has no {opt.attribute}"
    assert getattr(record(), str(opt.attribute)) == opt.value(None)


def test_only_known_groups() -> None:
    assert {o.group for o in OPTIONS} <= {"", AUTH}


def test_names_and_short_names_are_unique() -> None:
    names = [o.name for o in OPTIONS]
    shorts = [o.short for o in OPTIONS if o.short]
    assert len(names) == len(set(names)) and len(shorts) == len(set(shorts))
    assert all(re.fullmatch(r"[a-z][a-z0-9-]*", n) for n in names)


# -- twistd's Options ---------------------------------------------------------------


def test_twistd_options_are_the_table() -> None:
    options = Options()
    on_command_line = {o.name for o in OPTIONS if o.command_line}
    assert on_command_line <= set(options.synonyms)
    assert {o.name for o in OPTIONS if not o.command_line}.isdisjoint(options.synonyms)
    for opt in OPTIONS:
        if opt.short:
            assert options.synonyms[opt.short] == opt.name
        if opt.command_line:
            assert options.docs[opt.name] == opt.usage_help


def test_a_short_name_works(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_environment(monkeypatch)
    options = Options()
    options.parseOptions(["-p", "6000", "-d", "/srv/x"])
    assert (options.settings.port, options.settings.data_dir) == ("6000", "/srv/x")


def test_defaults_are_shown_in_the_help() -> None:
    assert "[default: 4G]" in str(Options())


# -- sources and precedence -----------------------------------------------------------

_TEXT_OPTIONS = [o for o in OPTIONS if o.parse is text and o.attribute and not (o.repeatable or o.flag)]


@pytest.mark.parametrize("opt", _TEXT_OPTIONS, ids=lambda o: o.name)
def test_command_line_beats_environment_beats_file_beats_default(opt: Option, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'{opt.name} = "from-file"\n')
    env = {"DICOMWEB_CONFIG": str(config)}
    cli = {opt.name: "from-cli"} if opt.command_line else {}

    def value(command_line: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
        return resolve(command_line, environ)[opt.group][str(opt.attribute)]

    assert value({}, NO_ENV) == opt.value(None)
    assert value({}, env) == "from-file"
    assert value({}, {**env, opt.env_name: "from-env"}) == "from-env"
    if cli:
        assert value(cli, {**env, opt.env_name: "from-env"}) == "from-cli"


def test_a_toml_key_may_use_underscores_and_a_dicomweb_table(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[dicomweb]\ndata_dir = "/srv/a"\nport = 5986\n')
    values = resolve({"config": str(config)}, NO_ENV)[""]
    assert (values["data_dir"], values["port"]) == ("/srv/a", "5986")


def test_flags_from_every_source(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("trust-forwarded = true\n")
    assert resolve({"config": str(config)}, NO_ENV)[""]["trust_forwarded"] is True
    assert resolve({}, {"DICOMWEB_NO_SENDFILE": "yes"})[""]["no_sendfile"] is True
    assert resolve({}, {"DICOMWEB_NO_SENDFILE": "0"})[""]["no_sendfile"] is False
    # A flag not given on the command line (twistd's 0) leaves the other sources alone.
    assert resolve({"allow-remote": 0}, {"DICOMWEB_ALLOW_REMOTE": "on"})[""]["allow_remote"] is True


def test_unknown_keys_and_variables_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('colour = "blue"\n')
    with pytest.raises(ValueError, match="colour"):
        resolve({"config": str(config)}, NO_ENV)
    with pytest.raises(ValueError, match="DICOMWEB_COLOUR"):
        env_values({"DICOMWEB_COLOUR": "blue"})
    assert env_values({"DICOMWEB_ARGS": "--port 1", "OTHER": "x"}) == {}


def test_a_config_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read config file"):
        resolve({"config": str(tmp_path / "missing.toml")}, NO_ENV)
    bad = tmp_path / "bad.toml"
    bad.write_text("port = \n")
    with pytest.raises(ValueError, match="cannot read config file"):
        resolve({"config": str(bad)}, NO_ENV)


def test_validations_stay() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        load_settings({"threads": "0"}, NO_ENV)
    with pytest.raises(ValueError, match="not a size"):
        load_settings({}, {"DICOMWEB_MAX_REQUEST_SIZE": "lots"})
    with pytest.raises(ValueError, match="none, basic, oidc"):
        load_settings({"auth": "kerberos"}, NO_ENV)
    assert load_settings({"auth": "NONE", "max-request-size": "1k"}, NO_ENV).max_request_size == 1024


# -- secrets -----------------------------------------------------------------------------


@pytest.mark.parametrize("opt", [o for o in OPTIONS if o.secret], ids=lambda o: o.name)
def test_secret_values_never_appear_in_a_repr(opt: Option) -> None:
    secret = "http://u:s3cr3t-value@couch.example:5984"
    values = resolve({}, {opt.env_name: secret})
    settings = Settings(**values[""], auth_settings=AuthSettings(**values[AUTH]))
    assert getattr(settings.auth_settings if opt.group else settings, str(opt.attribute)) == secret
    assert "s3cr3t" not in repr(settings)
    assert "s3cr3t" not in str(settings)


def test_a_secret_may_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    values = resolve({"oidc-client-secret-file": str(secret)}, NO_ENV)
    assert values[AUTH]["oidc_client_secret"] == "from-file"
    with pytest.raises(ValueError, match="cannot read --oidc-client-secret-file"):
        resolve({"oidc-client-secret-file": str(tmp_path / "none")}, NO_ENV)


# -- repeatable options --------------------------------------------------------------------


def _peer(value: Any) -> tuple[str, str, int]:
    """``AE=host:port`` (the shape of a DIMSE peer)."""
    match = re.fullmatch(r"([^=]{1,16})=(.+):(\d+)", str(value))
    if not match:
        raise ValueError(f"not AE=host:port: {value!r}")
    return match.group(1), match.group(2), int(match.group(3))


#: A test-only table: a repeatable option with its own parser, next to a plain one.
_TABLE: Sequence[Option] = (
    Option("config", "config file", field=None),
    Option("peer", "Known peer AE=host:port", parse=_peer, repeatable=True, short="P", field="peers"),
    Option("retries", "Retries", parse=at_least(0), default="3"),
)


def test_a_repeatable_option_from_the_command_line() -> None:
    class TestOptions(usage.Options):
        optParameters = usage_parameters(_TABLE)
        optFlags = usage_flags(_TABLE)

    for name, handler in usage_handlers(_TABLE).items():
        setattr(TestOptions, name, handler)
    options = TestOptions()
    options.parseOptions(["--peer", "A=h1:104", "-P", "B=h2:11112,C=h3:1"])
    assert resolve(options.opts, NO_ENV, _TABLE)[""] == {
        "peers": (("A", "h1", 104), ("B", "h2", 11112), ("C", "h3", 1)), "retries": 3}
    assert "(repeatable or comma list)" in str(options)


def test_a_repeatable_option_from_a_toml_list_or_a_comma_separated_variable(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('peer = ["A=h1:104", "B=h2:105"]\n')
    assert resolve({"config": str(config)}, NO_ENV, _TABLE)[""]["peers"] == (("A", "h1", 104), ("B", "h2", 105))
    assert resolve({}, {"DICOMWEB_PEER": "A=h1:104, B=h2:105"}, _TABLE)[""]["peers"] == (
        ("A", "h1", 104), ("B", "h2", 105))
    # The command line replaces (not extends) the other sources' list.
    assert resolve({"peer": ["C=h3:1"]}, {"DICOMWEB_PEER": "A=h1:104"}, _TABLE)[""]["peers"] == (("C", "h3", 1),)
    assert resolve({}, NO_ENV, _TABLE)[""]["peers"] == ()
    with pytest.raises(ValueError, match="--peer: not AE=host:port"):
        resolve({}, {"DICOMWEB_PEER": "A=h1"}, _TABLE)


def test_a_repeatable_option_with_a_default() -> None:
    assert resolve({}, NO_ENV)[""]["cors_origins"] == ("*",)
    assert resolve({}, {"DICOMWEB_CORS_ORIGIN": " , "})[""]["cors_origins"] == ("*",)
    assert resolve({"cors-origin": ["https://a", "https://b,https://c"]}, NO_ENV)[""]["cors_origins"] == (
        "https://a", "https://b", "https://c")


# -- README ------------------------------------------------------------------------------------


def _readme_rows() -> list[tuple[set[str], str]]:
    """(option names, default cell) of each row of README's option tables."""
    rows: list[tuple[set[str], str]] = []
    in_table = False
    for line in (Path(REPO) / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| option | default | meaning |"):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            names = set(re.findall(r"`--([a-z0-9-]+)`", cells[0]))
            names |= {v.lower().replace("_", "-") for v in re.findall(r"`DICOMWEB_([A-Z0-9_]+)`", cells[0])}
            rows.append((names, cells[1]))
    return rows


def test_the_readme_option_tables_are_the_table() -> None:
    rows = _readme_rows()
    documented = set().union(*(names for names, _ in rows))
    declared = {o.name for o in OPTIONS}
    missing, gone = sorted(declared - documented), sorted(documented - declared)
    assert not missing, f"add a row to one of README's option tables for {missing}"
    assert not gone, f"README's option tables document options that do not exist: {gone}"


def test_the_readme_defaults_are_the_table_defaults() -> None:
    options = {o.name: o for o in OPTIONS}
    for names, default in _readme_rows():
        for name in names:
            opt = options[name]
            expected = "off" if opt.flag else opt.default
            if expected is not None:
                assert str(expected) in default, f"README gives {default!r} as the default of {name}"


def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DICOMWEB_"):
            monkeypatch.delenv(key)
