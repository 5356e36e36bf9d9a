"""Typed settings, from command-line options, a TOML config file or the
environment.

Precedence: command line > environment (``DICOMWEB_<OPTION>``) > config file
(``--config FILE``, TOML with the option names as keys, e.g.
``data-dir = "/srv/dicom"``) > defaults.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """``"2G"`` -> 2147483648; plain numbers are bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 500M or 4G)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


@dataclass(frozen=True)
class Settings:
    port: str = "5985"
    data_dir: str = "dicomweb-data"
    base_url: str | None = None
    max_request_size: int = 4 << 30
    threads: int = 4
    allow_remote: bool = False
    trust_forwarded: bool = False
    log_query_strings: bool = False
    # The CouchDB store (used when ``couchdb`` is set). Credentials come from the
    # URL, ``couchdb_credentials`` (a file holding ``user:password``) or
    # ``DICOMWEB_COUCHDB_USER``/``DICOMWEB_COUCHDB_PASSWORD``; never logged.
    couchdb: str | None = field(default=None, repr=False)
    couchdb_db: str = "dicomweb"
    couchdb_credentials: str | None = None
    couchdb_user: str | None = None
    couchdb_password: str | None = field(default=None, repr=False)

    def couchdb_login(self) -> tuple[str | None, str | None]:
        """(user, password) from the credentials file or settings, else (None, None)."""
        if self.couchdb_credentials:
            with open(self.couchdb_credentials, encoding="utf-8") as fp:
                line = fp.readline().strip()
            user, sep, password = line.partition(":")
            if not sep or not user:
                raise ValueError("the CouchDB credentials file must hold one line: user:password")
            return user, password
        return self.couchdb_user, self.couchdb_password


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Options given as ``DICOMWEB_DATA_DIR=...`` etc."""
    environ = os.environ if environ is None else environ
    out = {}
    for key, value in environ.items():
        if key.startswith("DICOMWEB_") and key != "DICOMWEB_ARGS":
            out[key[len("DICOMWEB_"):].lower().replace("_", "-")] = value
    return out


def load_config_file(path: str) -> dict[str, Any]:
    with open(path, "rb") as fp:
        data = tomllib.load(fp)
    section = data.get("dicomweb", data)
    return {str(k).replace("_", "-"): v for k, v in section.items()}
