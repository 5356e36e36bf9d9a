"""The twistd plugin's options: defaults, config file, environment, exposure."""

from __future__ import annotations

import pytest
from twisted.python import usage

from dicomweb.tap import Options, endpoint_description


def _parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_a_bare_port_listens_on_loopback_only() -> None:
    options = _parse("--port", "5985")
    assert endpoint_description(options.settings.port) == "tcp:5985:interface=127.0.0.1"


def test_listening_on_all_interfaces_without_auth_needs_an_explicit_yes() -> None:
    with pytest.raises(usage.UsageError, match="allow-remote"):
        _parse("--port", "tcp:5985")
    assert _parse("--port", "tcp:5985", "--allow-remote").settings.allow_remote


def test_sizes_take_units() -> None:
    assert _parse("--max-request-size", "500M").settings.max_request_size == 500 * 1024 * 1024


def test_a_config_file_and_the_environment_are_read_and_the_command_line_wins(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "dicomweb.toml"
    config.write_text('data-dir = "/srv/a"\nbase-url = "https://pacs.example/dicomweb"\nthreads = 3\n')
    monkeypatch.setenv("DICOMWEB_THREADS", "6")
    settings = _parse("--config", str(config), "--data-dir", "/srv/b").settings
    assert (settings.data_dir, settings.base_url, settings.threads) == ("/srv/b", "https://pacs.example/dicomweb", 6)


def test_unknown_settings_in_a_config_file_are_an_error(tmp_path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('colour = "blue"\n')
    with pytest.raises(usage.UsageError, match="colour"):
        _parse("--config", str(config))
