"""STOW work done while the body still arrives: each part file of a
``multipart/related; type="application/dicom"`` body is analysed and synced
as soon as it is complete (dicomweb.ingest.PartPreparer); what is stored,
refused and answered stays exactly what it was."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomweb import ingest
from dicomweb.store import sqlindex
from tests import dicomgen
from tests.httpclient import failed, json_of, referenced, stow
from tests.inprocess import InProcessServer


@pytest.fixture
def inproc_parts(tmp_path: Path) -> Iterator[InProcessServer]:
    with InProcessServer(str(tmp_path / "data"), bodies="parts") as server:
        yield server


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The files fsynced ahead (by ingest) and by the store."""
    calls: dict[str, list[str]] = {"ahead": [], "store": []}
    real = ingest.fsync_path

    def recorder(key: str) -> Any:
        def record(path: str) -> None:
            calls[key].append(path)
            real(path)
        return record

    monkeypatch.setattr(ingest, "fsync_path", recorder("ahead"))
    monkeypatch.setattr(sqlindex, "fsync_path", recorder("store"))
    return calls


def _analysed_after(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many parts each after-the-body analysis call got."""
    sizes: list[int] = []
    real = ingest._analyze_parts

    def record(items: Any) -> Any:
        sizes.append(len(items))
        return real(items)

    monkeypatch.setattr(ingest, "_analyze_parts", record)
    return sizes


def _retrieved(server: InProcessServer, instance: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(instance), stop_before_pixels=True)
    response = server.client.get(f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                                 f"/instances/{ds.SOPInstanceUID}", headers={"Accept": "application/dicom"})
    assert response.status_code == 200
    return response.content[response.content.index(b"DICM") - 128:].split(b"\r\n--")[0]


def test_parts_are_analysed_and_synced_as_they_arrive_and_not_synced_again(
        inproc_parts: InProcessServer, synced: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    after = _analysed_after(monkeypatch)
    parts = list(dicomgen.ct_series(3, size=128))
    response = stow(inproc_parts.client, parts)
    assert response.status_code == 200
    assert len(referenced(json_of(response))) == 3
    assert len(synced["ahead"]) == 3 and synced["store"] == []  # moved into place, not synced twice
    assert after == []  # nothing left to analyse once the body was in
    for part in parts:
        assert _retrieved(inproc_parts, part) == part


def test_a_part_refused_by_analysis_is_not_synced_and_keeps_its_reason(
        inproc_parts: InProcessServer, synced: dict[str, list[str]]) -> None:
    good = next(dicomgen.ct_series(1, size=64))
    response = stow(inproc_parts.client, [b"not DICOM at all" * 100, good])
    assert response.status_code == 202
    body = json_of(response)
    assert len(referenced(body)) == 1
    assert [code for _uid, code in failed(body)] == [0xC000]
    assert len(synced["ahead"]) == 1  # only the instance that is stored


def test_a_study_scoped_stow_refuses_parts_of_another_study_analysed_ahead(inproc_parts: InProcessServer) -> None:
    study = generate_uid()
    mine = next(dicomgen.ct_series(1, study_uid=study, size=64))
    other = next(dicomgen.ct_series(1, size=64))
    response = stow(inproc_parts.client, [mine, other], study=study)
    assert response.status_code == 202
    body = json_of(response)
    assert len(referenced(body)) == 1
    assert [code for _uid, code in failed(body)] == [0xA900]
    assert os.listdir(Path(inproc_parts.settings.data_dir) / "spool") == []


def test_parts_past_the_ahead_limit_are_analysed_once_the_body_is_in(
        inproc_parts: InProcessServer, synced: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "PREPARE_AHEAD", 2)
    after = _analysed_after(monkeypatch)
    parts = list(dicomgen.ct_series(5, size=64))
    response = stow(inproc_parts.client, parts)
    assert response.status_code == 200
    assert len(referenced(json_of(response))) == 5
    assert sum(after) == 3  # the parts after the first two
    assert len(synced["ahead"]) == 5 and synced["store"] == []  # every file is still synced ahead


def test_a_part_whose_preparation_failed_is_analysed_and_synced_by_the_usual_path(
        inproc_parts: InProcessServer, synced: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(item: Any, analyse: bool) -> Any:
        raise OSError("the disk said no")

    monkeypatch.setattr(ingest, "_prepare", broken)
    parts = list(dicomgen.ct_series(2, size=64))
    response = stow(inproc_parts.client, parts)
    assert response.status_code == 200
    assert len(referenced(json_of(response))) == 2
    assert len(synced["store"]) == 2  # the store synced them itself


def test_a_metadata_body_is_not_prepared(inproc_parts: InProcessServer, synced: dict[str, list[str]]) -> None:
    # dicom+json parts are not instances: nothing to analyse or sync ahead.
    response = inproc_parts.client.post("/studies", data=b'--b\r\nContent-Type: application/dicom+json\r\n\r\n[]\r\n--b--',
                                        headers={"Content-Type": 'multipart/related; type="application/dicom+json"; '
                                                                 "boundary=b"})
    assert response.status_code in (200, 202, 400, 409)
    assert synced["ahead"] == []
