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


def _mixed(root: Path, study: str) -> None:
    """Add what real folders hold: a file with no Study UID, a truncated one,
    and one whose data set contradicts its transfer syntax (pydicom warns)."""
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(next(iter(dicomgen.ct_series(1, study_uid=study)))))
    del ds.StudyInstanceUID
    ds.save_as(root / "no-study.dcm", enforce_file_format=True)
    cut = next(iter(dicomgen.ct_series(1, study_uid=study)))
    (root / "a" / "truncated.dcm").write_bytes(cut[:len(cut) // 2])
    ds = pydicom.dcmread(io.BytesIO(next(iter(dicomgen.ct_series(1, study_uid=study)))))
    # Implicit VR data under an Explicit VR transfer syntax: readable, with a warning.
    pydicom.dcmwrite(root / "warns.dcm", ds, implicit_vr=True, little_endian=True, force_encoding=True)


def test_the_summary_says_why_and_progress_never_counts_past_the_total(url: str, folder: tuple[Path, str]) -> None:
    root, study = folder
    _mixed(root, study)
    result = subprocess.run([sys.executable, "-m", "dicomweb.importer", "--url", url, "--batch", "2",
                             str(root)], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": REPO})
    lines = result.stdout.splitlines()
    assert lines[0].startswith("7 stored, 1 already present, 2 failed, 2 not DICOM (skipped), 12 files seen"), \
        result.stdout + result.stderr
    assert "  already present: 1 x same SOP Instance UID as another file of this import " \
           "(a/IMG0001 = copy-of-img1.dcm)" in lines
    assert "  failed: 1 x no StudyInstanceUID (no-study.dcm)" in lines
    assert any(line.startswith("  failed: 1 x cannot understand: ") and "(a/truncated.dcm)" in line for line in lines)
    assert "  warning: 1 x Expected explicit VR, but found implicit VR - using implicit VR for reading (warns.dcm)" \
        in lines
    assert result.returncode == 1  # something failed
    progress = [line for line in result.stderr.splitlines() if " instances, " in line]
    assert progress, result.stderr  # not a terminal: plain lines, the last one at the end
    assert progress[-1].startswith("8/8 instances") and progress[-1].endswith("done")
    assert "Expected explicit VR" not in result.stderr  # warnings are summarised, not printed per file


def test_on_a_terminal_progress_is_one_bar_redrawn_in_place() -> None:
    import io

    from dicomweb.importer import Progress, Summary

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    summary = Summary(done=5, bytes_done=500)
    progress = Progress(10, 1000, True, stream=out)
    progress.update(summary, force=True)
    summary.done, summary.bytes_done = 10, 1000
    progress.finish(summary)
    text = out.getvalue()
    assert text.startswith("\r[###############               ] 5/10 instances, 0.0/0.0 MB")
    assert "\r[##############################] 10/10 instances" in text and text.endswith("done   \n")
