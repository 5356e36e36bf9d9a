"""kill -9 during a STOW load loses nothing acknowledged and leaves nothing half there."""

from __future__ import annotations

import threading
import time

import requests
from pydicom.uid import generate_uid

from tests import dicomgen
from tests.httpclient import json_of, referenced, split_multipart, stow
from tests.server import ServerProcess


def _load(url: str, acked: dict[str, tuple[str, str, bytes]], stop: threading.Event, worker: int) -> None:
    study = generate_uid()
    number = 0
    while not stop.is_set():
        series = generate_uid()
        parts = []
        for _ in range(5):
            number += 1
            parts.append(dicomgen.ct_instance(study, series, number, size=32, seed=worker * 10000 + number))
        try:
            response = stow(url, parts)
        except requests.RequestException:
            return  # the server died under us: this request was never acknowledged
        if response.status_code == 200:
            body = json_of(response)
            by_uid = {}
            for part in parts:
                import io

                import pydicom

                by_uid[pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True).SOPInstanceUID] = part
            for sop in referenced(body):
                acked[sop] = (study, series, by_uid[sop])


def test_kill_9_during_stow_keeps_every_acknowledged_instance(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    acked: dict[str, tuple[str, str, bytes]] = {}
    stop = threading.Event()
    workers = [threading.Thread(target=_load, args=(fresh_server.url, acked, stop, i)) for i in range(3)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 20
    while len(acked) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    fresh_server.kill()
    stop.set()
    for w in workers:
        w.join(30)
    assert len(acked) >= 60
    fresh_server.start()
    url = fresh_server.url
    for sop, (study, series, data) in acked.items():
        response = requests.get(f"{url}/studies/{study}/series/{series}/instances/{sop}")
        assert response.status_code == 200, sop
        assert split_multipart(response)[0][1] == data
    # Whatever is visible is whole: counts agree with what can be retrieved.
    for study_json in requests.get(f"{url}/studies").json():
        study = study_json["0020000D"]["Value"][0]
        count = study_json["00201208"]["Value"][0]
        metadata = requests.get(f"{url}/studies/{study}/metadata").json()
        assert len(metadata) == count
        parts = split_multipart(requests.get(f"{url}/studies/{study}"))
        assert len(parts) == count
        assert all(len(body) > 1000 for _, body in parts)
