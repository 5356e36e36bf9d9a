"""The tree stays lint- and type-clean: ``ruff check .`` and ``mypy dicomweb tests``.

Both run as the developer would run them, from the repository root, with the
settings in pyproject.toml (mypy with the mypy-zope plugin). mypy keeps its
cache in ``.mypy_cache`` there: a first run checks everything (about 14 s on
the 2-core test machine), later runs only what changed (under 1 s). A missing
tool skips its test (``pip install -e '.[test]'`` installs both); in CI
(``CI`` set) it fails instead, so a broken set-up cannot pass silently.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.lint


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    _require("ruff")
    result = _run("ruff", "check", "--no-cache", "--quiet", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing_in_the_package_and_the_tests() -> None:
    _require("mypy", "mypy_zope")
    result = _run("mypy", "dicomweb", "tests")
    assert result.returncode == 0, result.stdout + result.stderr
