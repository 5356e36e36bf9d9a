"""A fleet under load: four frontends on one CouchDB-API server, sixteen
clients storing, searching and retrieving through all of them at once, and
one frontend killed (``kill -9``) in the middle.

Nothing acknowledged is lost, counts are exact, every acknowledged instance
comes back byte-identical from every live frontend, no answer is a 5xx,
a client whose frontend died succeeds by retrying elsewhere, and the batch
the dead frontend left half done (its journal) is finished by the others.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests import couchdb, dicomgen
from tests.httpclient import json_of, referenced, split_multipart, stow
from tests.server import ServerProcess
from tests.stowload import wait_for

CLIENTS = 16
LOAD_SECONDS = 14.0
KILL_AFTER = 5.0


@pytest.fixture
def fleet(couch_server: couchdb.CouchServer, tmp_path: os.PathLike[str]) -> Iterator[tuple[str, list[ServerProcess]]]:
    db = "fleet-" + uuid.uuid4().hex[:8]
    fronts = couchdb.start_frontends(couch_server.url, db, str(tmp_path))
    try:
        yield db, fronts
    finally:
        for front in fronts:
            front.stop()
    for front in fronts:
        assert "Traceback" not in front.log(), front.log()[-3000:]


@dataclass
class Client:
    """One client thread's study and what the fleet acknowledged of it."""

    number: int
    study: str = field(default_factory=generate_uid)
    acked: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # sop -> (series, bytes)
    errors: list[str] = field(default_factory=list)
    retried: int = 0


class Fleet:
    def __init__(self, fronts: list[ServerProcess]) -> None:
        self.fronts = fronts
        self.dead: set[int] = set()
        self.stop = threading.Event()

    def live(self, start: int) -> Iterator[ServerProcess]:
        """Frontends from ``start`` on, round the ring, the dead left out."""
        for k in range(len(self.fronts)):
            n = (start + k) % len(self.fronts)
            if n not in self.dead:
                yield self.fronts[n]

    def run(self, client: Client) -> None:
        turn = client.number
        while not self.stop.is_set():
            turn += 1
            series = generate_uid()
            parts = [dicomgen.ct_instance(client.study, series, turn * 10 + k, size=16, seed=client.number * 997 + turn)
                     for k in range(2)]
            self._store(client, series, parts, turn)
            self._search_and_retrieve(client, turn + 1)

    def _store(self, client: Client, series: str, parts: list[bytes], turn: int) -> None:
        for front in self.live(turn):
            try:
                response = stow(front.url, parts)
            except requests.RequestException:
                client.retried += 1  # that frontend died: the same request elsewhere
                continue
            if response.status_code >= 500:
                client.errors.append(f"STOW {response.status_code} {response.text[:200]}")
                return
            by_uid = {str(pydicom.dcmread(io.BytesIO(p), stop_before_pixels=True).SOPInstanceUID): p for p in parts}
            for sop in referenced(json_of(response)):
                client.acked[sop] = (series, by_uid[sop])
            return
        client.errors.append("no frontend answered")

    def _search_and_retrieve(self, client: Client, turn: int) -> None:
        for front in self.live(turn):
            try:
                found = requests.get(f"{front.url}/studies", params={"StudyInstanceUID": client.study}, timeout=30)
                if found.status_code >= 500:
                    client.errors.append(f"QIDO {found.status_code}")
                    return
                by_name = requests.get(f"{front.url}/studies", timeout=30,
                                       params={"PatientName": "doe*", "StudyDate": "20240101-20241231", "limit": "5"})
                if by_name.status_code != 200 or not by_name.json():
                    client.errors.append(f"QIDO by name {by_name.status_code}")
                    return
                count = found.json()[0]["00201208"]["Value"][0] if found.json() else 0
                if count != len(client.acked):  # only this client writes its study
                    client.errors.append(f"count {count} != {len(client.acked)}")
                sop, (series, data) = next(iter(client.acked.items()))
                got = requests.get(f"{front.url}/studies/{client.study}/series/{series}/instances/{sop}", timeout=30)
                if got.status_code != 200 or split_multipart(got)[0][1] != data:
                    client.errors.append(f"WADO {got.status_code}")
                return
            except requests.RequestException:
                client.retried += 1


def _journals(couch: couchdb.CouchServer, db: str) -> list[dict[str, object]]:
    """The journal documents (the store's own index; pouchdb-server may fail
    a ``_find`` while documents are replaced, so it is asked again)."""
    for _ in range(20):
        response = requests.post(f"{couch.url}/{db}/_find", timeout=30, json={
            "selector": {"doctype": "journal", "at": {"$gt": None}}, "use_index": ["dicomweb-v1", "journal"],
            "limit": 10000})
        if response.status_code == 200:
            return [d for d in response.json()["docs"] if d]
    raise AssertionError(f"_find keeps failing: {response.status_code} {response.text[:200]}")


@pytest.mark.slow
def test_sixteen_clients_on_four_frontends_one_killed_lose_nothing_acknowledged(
        couch_server: couchdb.CouchServer, fleet: tuple[str, list[ServerProcess]]) -> None:
    db, fronts = fleet
    victim = fronts[3]
    victim_id = re.search(r"frontend ([0-9a-f]+)\)", victim.log())
    assert victim_id
    run = Fleet(fronts)
    clients = [Client(n) for n in range(CLIENTS)]
    threads = [threading.Thread(target=run.run, args=(c,)) for c in clients]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: time.monotonic() - started > KILL_AFTER, KILL_AFTER + 5)
        victim.kill()
        run.dead.add(3)
        left = [j for j in _journals(couch_server, db) if j.get("fe") == victim_id.group(1)]
        wait_for(lambda: time.monotonic() - started > LOAD_SECONDS, LOAD_SECONDS + 5)
    finally:
        run.stop.set()
        for thread in threads:
            thread.join(60)
    assert [e for c in clients for e in c.errors] == []
    acked = sum(len(c.acked) for c in clients)
    assert acked >= CLIENTS * 2
    # The dead frontend's unfinished batches are finished by the others.
    wait_for(lambda: not [j for j in _journals(couch_server, db) if j.get("fe") == victim_id.group(1)], 45)
    live = fronts[:3]
    for client in clients:
        for front in live:
            found = requests.get(f"{front.url}/studies", params={"StudyInstanceUID": client.study}, timeout=30).json()
            assert found[0]["00201208"]["Value"] == [len(client.acked)]
        bodies = {body for _, body in split_multipart(requests.get(f"{live[client.number % 3].url}/studies/"
                                                                   f"{client.study}", timeout=60))}
        assert bodies == {data for _, data in client.acked.values()}
    for front in live:  # every frontend serves every acknowledged instance
        for client in clients[::4]:
            for sop, (series, data) in list(client.acked.items())[:3]:
                got = requests.get(f"{front.url}/studies/{client.study}/series/{series}/instances/{sop}", timeout=30)
                assert split_multipart(got)[0][1] == data
    print(f"acknowledged {acked} instances; {len(left)} journals of the killed frontend left, finished; "
          f"{sum(c.retried for c in clients)} requests retried elsewhere")
