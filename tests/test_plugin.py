"""The twistd plugin stays light, and the .tac file builds the same service."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.server import REPO

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def test_the_plugin_module_imports_neither_pydicom_nor_the_app() -> None:
    code = ("import sys, twisted.plugins.dicomweb_plugin as p; "
            "assert p.dicomweb.tapname == 'dicomweb'; "
            "print(sorted(m for m in sys.modules if m.startswith(('pydicom', 'dicomweb', 'klein'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": REPO}, check=True)
    assert out.stdout.strip() == "[]"


def test_twistd_lists_the_dicomweb_plugin() -> None:
    out = subprocess.run([*TWISTD, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert re.search(r"^\s+dicomweb\s+A DICOMweb server", out.stdout, re.M), out.stdout


def test_the_tac_file_serves_with_options_from_the_environment(tmp_path: Path) -> None:
    log = tmp_path / "tac.log"
    env = {**os.environ, "PYTHONPATH": REPO,
           "DICOMWEB_ARGS": f"--data-dir {tmp_path / 'data'}", "DICOMWEB_PORT": "tcp:0:interface=127.0.0.1"}
    proc = subprocess.Popen([*TWISTD, "-n", "--pidfile=", f"--logfile={log}", "-y", "tac/dicomweb.tac"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text() if log.exists() else ""
            text = log.read_text() if log.exists() else ""
            match = re.search(r"Site starting on (\d+)", text)
            port = int(match.group(1)) if match else None
            time.sleep(0.05)
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).text == "ok\n"
        assert (tmp_path / "data" / "index.sqlite3").exists()
    finally:
        proc.terminate()
        proc.wait(15)
