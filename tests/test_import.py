"""dicomweb-import over a folder mixing DICOM, non-DICOM and duplicates."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from pydicom.uid import generate_uid

from tests import dicomgen
from tests.server import REPO, ServerProcess


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, str]:
    study = generate_uid()
    root = tmp_path / "import"
    (root / "a" / "b").mkdir(parents=True)
    for i, data in enumerate(dicomgen.ct_series(6, study_uid=study)):
        (root / ("a" if i % 2 else "a/b") / f"IMG{i:04d}").write_bytes(data)  # no .dcm suffix
    shutil.copy(root / "a" / "IMG0001", root / "copy-of-img1.dcm")  # a duplicate
    (root / "notes.txt").write_text("not DICOM")
    (root / "a" / "empty").write_bytes(b"")
    return root, study


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomweb.importer", "--quiet", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})


def _instances(url: str, study: str) -> int:
    found = requests.get(f"{url}/studies", params={"StudyInstanceUID": study}).json()
    return found[0]["00201208"]["Value"][0] if found else 0


def test_import_stores_dicom_skips_the_rest_and_resumes_cheaply(url: str, folder: tuple[Path, str]) -> None:
    root, study = folder
    dry = _run(str(root), "--url", url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "2 not DICOM" in dry.stdout and _instances(url, study) == 0
    first = _run(str(root), "--url", url, "--batch", "2")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("6 stored, 1 already present, 0 failed, 2 not DICOM (skipped), 9 files seen")
    assert _instances(url, study) == 6
    again = _run(str(root), "--url", url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("0 stored, 7 already present")
    assert _instances(url, study) == 6


def test_offline_import_indexes_files_in_place(tmp_path: Path, folder: tuple[Path, str]) -> None:
    """Offline indexing is an embedded-store feature (no server involved)."""
    root, study = folder
    fresh_server = ServerProcess(str(tmp_path / "data"), str(tmp_path / "server.log"))
    result = _run(str(root), "--offline", "--data-dir", fresh_server.data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("6 stored, 1 already present")
    fresh_server.start()
    assert _instances(fresh_server.url, study) == 6
    parts = requests.get(f"{fresh_server.url}/studies/{study}")
    assert parts.status_code == 200
    assert not os.listdir(os.path.join(fresh_server.data_dir, "files"))  # nothing was copied
    assert (root / "a" / "IMG0001").exists()
    fresh_server.stop()


def test_import_needs_a_url_or_offline(tmp_path: Path) -> None:
    assert _run(str(tmp_path)).returncode == 2
