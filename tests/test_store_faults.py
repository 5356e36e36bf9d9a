"""Disk full and a damaged index: acknowledged instances stay, failed ones are
answered "out of resources" (A700) and leave nothing behind, and the store
serves again once space is back. In this process (tests/inprocess.py), with
real faults where they can be made here (SQLite's page limit) and ENOSPC
injected at the file layer where they cannot (a full file system)."""

from __future__ import annotations

import errno
import io
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomweb.store import sqlindex
from dicomweb.store.sqlindex import EmbeddedIndex
from tests import dicomgen
from tests.httpclient import failed, json_of, referenced, stow
from tests.inprocess import Client, InProcessServer

OUT_OF_RESOURCES = 0xA700


def _instances(count: int) -> list[bytes]:
    study = generate_uid()
    return [dicomgen.ct_instance(study, generate_uid(), n) for n in range(1, count + 1)]


def _sop(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def _stored_files(server: InProcessServer) -> int:
    files = Path(server.settings.data_dir) / "files"
    return sum(len(names) for _, _, names in os.walk(files))


def _failing_after(calls: int, real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, that raises ENOSPC from its ``calls + 1``-th call on."""
    count = {"n": 0}

    def call(*args: Any, **kwargs: Any) -> Any:
        count["n"] += 1
        if count["n"] > calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)
    return call


@pytest.fixture
def whole(tmp_path: Path) -> Iterator[InProcessServer]:
    """Bodies spooled whole: the store copies each part into its file."""
    with InProcessServer(str(tmp_path / "data"), bodies="whole") as server:
        yield server


def test_a_full_disk_mid_request_fails_the_rest_with_a700_and_keeps_what_was_written(
        whole: InProcessServer, monkeypatch: pytest.MonkeyPatch) -> None:
    http = whole.client
    data = _instances(3)
    monkeypatch.setattr(sqlindex, "copy_range", _failing_after(1, sqlindex.copy_range))
    response = stow(http, data)
    assert response.status_code == 202, response.text
    body = json_of(response)
    assert referenced(body) == [_sop(data[0])]
    assert sorted(failed(body)) == sorted((_sop(d), OUT_OF_RESOURCES) for d in data[1:])
    assert all("out of storage space" in item["00091001"]["Value"][0] for item in body["00081198"]["Value"])
    assert _stored_files(whole) == 1  # nothing half-written is left
    monkeypatch.undo()  # space is back
    again = stow(http, data)
    assert again.status_code == 200, again.text
    assert _stored_files(whole) == 3


def test_a_full_index_fails_the_batch_with_a700_and_stores_nothing_of_it(
        whole: InProcessServer) -> None:
    http = whole.client
    first = _instances(1)
    assert stow(http, first).status_code == 200
    conn = whole.store.index.connection()
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count={pages}")  # a real SQLITE_FULL on the next growth
    data = _instances(40)
    response = stow(http, data)
    assert response.status_code == 409, response.text
    assert {code for _, code in failed(json_of(response))} == {OUT_OF_RESOURCES}, response.text
    assert _stored_files(whole) == 1
    conn.execute("PRAGMA max_page_count=1073741823")
    assert stow(http, data).status_code == 200
    assert http.get(f"/studies/{pydicom.dcmread(io.BytesIO(data[0])).StudyInstanceUID}/instances").json()


class _FullFile:
    """A spool file on a full disk: every write fails."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_full_disk_while_a_body_arrives_is_507_and_nothing_is_kept(
        inproc: InProcessServer, monkeypatch: pytest.MonkeyPatch) -> None:
    http: Client = inproc.client
    from dicomweb.io.multipart import PartSplitter
    from dicomweb.store.base import Spool

    monkeypatch.setattr(PartSplitter, "_write_file", _failing_after(0, PartSplitter._write_file))
    real_temporary = Spool.temporary_file
    monkeypatch.setattr(Spool, "temporary_file", lambda self: _FullFile(real_temporary(self)))
    data = _instances(20)  # over the size twisted.web keeps in memory
    response = stow(http, data)
    assert response.status_code == 507, response.text
    assert "out of storage space" in response.text and response.headers["Retry-After"]
    monkeypatch.undo()  # space is back
    spool = Path(inproc.settings.data_dir) / "spool"
    assert not [p for p in spool.rglob("*") if p.is_file()]
    assert stow(http, data).status_code == 200


def _stored_index(tmp_path: Path, close: bool = True) -> str:
    """A data directory whose index holds a few instances; closed cleanly or not (a crash)."""
    data_dir = str(tmp_path / "data")
    server = InProcessServer(data_dir, bodies="whole")
    assert stow(server.client, _instances(30)).status_code == 200
    if close:
        server.close()
    return data_dir


def _scribble(path: str, page: int) -> None:
    """Overwrite the middle of one database page with garbage (page numbers from 1)."""
    with open(path, "r+b") as db:
        db.seek(4096 * (page - 1) + 100)
        db.write(os.urandom(3000))


def test_an_index_that_is_not_a_database_is_refused_at_start_with_a_clear_reason(tmp_path: Path) -> None:
    data_dir = _stored_index(tmp_path)
    index = EmbeddedIndex(data_dir)
    with open(index.db_path, "r+b") as db:
        db.write(b"this is not SQLite at all")
    with pytest.raises(sqlindex.DamagedIndex, match=r"is damaged .*restore it from a backup"):
        index.open()


def test_after_a_crash_a_damaged_index_is_found_before_anything_is_served(tmp_path: Path) -> None:
    data_dir = _stored_index(tmp_path, close=False)  # no clean mark: the next start checks
    index = EmbeddedIndex(data_dir)
    with sqlite3.connect(index.db_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
    _scribble(index.db_path, pages)  # the last page: an index b-tree written last
    with pytest.raises(sqlindex.DamagedIndex, match="is damaged"):
        index.open()
    with pytest.raises(sqlindex.DamagedIndex):  # still not trusted on the next try
        EmbeddedIndex(data_dir).open()


def test_a_clean_index_opens_and_a_crash_only_costs_a_check(tmp_path: Path) -> None:
    data_dir = _stored_index(tmp_path, close=False)
    index = EmbeddedIndex(data_dir)
    index.open()  # checked, fine
    index.close()
    assert os.path.exists(os.path.join(data_dir, sqlindex.CLEAN_MARK))
    again = EmbeddedIndex(data_dir)
    again.open()
    assert not os.path.exists(os.path.join(data_dir, sqlindex.CLEAN_MARK))  # until it closes again
    again.close()
