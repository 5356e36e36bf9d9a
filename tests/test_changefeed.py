"""The change feed (README "Change feed") on every store, through the real
server: events of store, replace, delete, reject and restore; paging that
never misses or repeats; metadata; latest; long-poll; bad parameters.

The ``server`` fixture is shared by the session, so each test starts from
the feed's latest sequence and looks only at what came after it."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
import requests
from pydicom.uid import generate_uid

from tests import couchdb, dicomgen
from tests.httpclient import referenced, stow
from tests.ops_helpers import store_study
from tests.server import ServerProcess
from tests.test_sqlsearch import downgrade_to_4


def latest_sequence(url: str) -> int:
    response = requests.get(f"{url}/changefeed/latest", params={"includemetadata": "false"}, timeout=30)
    assert response.status_code == 200, response.text
    return int(response.json().get("Sequence", 0))


def feed(url: str, offset: int, limit: int = 200, **params: Any) -> list[dict[str, Any]]:
    response = requests.get(f"{url}/changefeed", params={"offset": offset, "limit": limit, **params}, timeout=90)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    entries: list[dict[str, Any]] = response.json()
    return entries


def all_after(url: str, offset: int, limit: int = 200, **params: Any) -> list[dict[str, Any]]:
    """Every entry after ``offset``, page by page (each page asked after the last sequence seen)."""
    out: list[dict[str, Any]] = []
    while True:
        page = feed(url, offset, limit, **params)
        out.extend(page)
        if len(page) < limit:
            return out
        offset = page[-1]["Sequence"]


def summary(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["SopInstanceUid"], e["Action"], e["State"]) for e in entries]


def instance(study: str, series: str, sop: str, seed: int = 1) -> bytes:
    return dicomgen.ct_instance(study, series, 1, size=16, sop_uid=sop, seed=seed)


def test_a_stored_instance_is_a_create_with_its_metadata(server: ServerProcess) -> None:
    url = server.url
    start = latest_sequence(url)
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    assert stow(url, [instance(study, series, sop)]).status_code == 200
    [entry] = feed(url, start)
    assert entry["Sequence"] == start + 1
    assert (entry["StudyInstanceUid"], entry["SeriesInstanceUid"], entry["SopInstanceUid"]) == (study, series, sop)
    assert (entry["Action"], entry["State"]) == ("Create", "Current")
    assert entry["Metadata"]["00080018"]["Value"] == [sop]
    assert entry["Timestamp"].endswith("Z")
    assert abs(datetime.fromisoformat(entry["Timestamp"][:-1] + "+00:00").timestamp() - time.time()) < 120
    [bare] = feed(url, start, includemetadata="false")
    assert "Metadata" not in bare and bare["Sequence"] == entry["Sequence"]
    latest = requests.get(f"{url}/changefeed/latest", timeout=30).json()
    assert latest["Sequence"] == entry["Sequence"] and latest["Metadata"]["00080018"]["Value"] == [sop]


def test_storing_the_same_bytes_again_is_no_event(server: ServerProcess) -> None:
    url = server.url
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    part = instance(study, series, sop)
    assert stow(url, [part]).status_code == 200
    start = latest_sequence(url)
    assert stow(url, [part]).status_code == 200
    assert feed(url, start) == []


def test_replace_delete_reject_and_restore_events_and_their_states(server: ServerProcess) -> None:
    url = server.url
    start = latest_sequence(url)
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    assert stow(url, [instance(study, series, sop, seed=1)]).status_code == 200
    assert stow(url, [instance(study, series, sop, seed=2)]).status_code == 200  # replaced
    assert summary(feed(url, start)) == [(sop, "Create", "Replaced"), (sop, "Create", "Current")]

    path = f"/studies/{study}/series/{series}/instances/{sop}"
    assert requests.post(f"{url}{path}/reject/113001%5EDCM", timeout=60).status_code == 204
    entries = feed(url, start)
    assert summary(entries) == [(sop, "Create", "Deleted"), (sop, "Create", "Deleted"), (sop, "Delete", "Deleted")]
    assert all("Metadata" not in e for e in entries)

    assert stow(url, [instance(study, series, sop, seed=2)]).status_code == 200  # restored
    assert summary(feed(url, start))[2:] == [(sop, "Delete", "Replaced"), (sop, "Create", "Current")]

    assert requests.delete(url + path, timeout=60).status_code == 204
    entries = feed(url, start)
    assert summary(entries)[3:] == [(sop, "Create", "Deleted"), (sop, "Delete", "Deleted")]
    sequences = [e["Sequence"] for e in entries]
    assert sequences == list(range(start + 1, start + 6))


def test_deleting_a_study_is_one_delete_per_instance(server: ServerProcess) -> None:
    url = server.url
    study = store_study(url)
    start = latest_sequence(url)
    _ct, mr = study.series
    assert requests.post(f"{url}/studies/{study.uid}/series/{mr.uid}/reject/113001%5EDCM", timeout=60).status_code == 204
    assert requests.delete(f"{url}/studies/{study.uid}", timeout=60).status_code == 204
    entries = feed(url, start)
    assert [e["Action"] for e in entries] == ["Delete"] * 5  # the 2 rejected ones were deleted once, when rejected
    assert sorted(e["SopInstanceUid"] for e in entries) == sorted(s for se in study.series for s in se.sops)
    assert {e["State"] for e in entries} == {"Deleted"}


def test_paging_with_offset_and_limit_never_misses_or_repeats(server: ServerProcess) -> None:
    url = server.url
    start = latest_sequence(url)
    study = store_study(url, (("CT", 7), ("MR", 6)))
    sops = [s for se in study.series for s in se.sops]
    for limit in (1, 3, 5, 200):
        entries = all_after(url, start, limit, includemetadata="false")
        assert [e["Sequence"] for e in entries] == list(range(start + 1, start + 14))
        assert sorted(e["SopInstanceUid"] for e in entries) == sorted(sops)
    default = requests.get(f"{url}/changefeed", params={"offset": start}, timeout=30).json()
    assert [e["Sequence"] for e in default] == list(range(start + 1, start + 11))  # the default limit is 10
    assert feed(url, start + 13) == []


@pytest.mark.parametrize("query", ["offset=-1", "offset=x", "limit=0", "limit=201", "limit=1.5",
                                   "includemetadata=maybe", "timeout=61", "timeout=-1", "timeout=nan",
                                   "offset=1&offset=2"])
def test_bad_parameters_are_400_with_a_reason(server: ServerProcess, query: str) -> None:
    response = requests.get(f"{server.url}/changefeed?{query}", timeout=30)
    assert response.status_code == 400
    assert query.split("=")[0] in response.text


def _wait_in_thread(url: str, offset: int, timeout: float) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        response = requests.get(f"{url}/changefeed", params={"offset": offset, "timeout": timeout}, timeout=90)
        result.update(status=response.status_code, entries=response.json(), took=time.monotonic() - started)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _until(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def waiters(url: str) -> int:
    """Long-poll requests waiting now (the server's gauge)."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    line = next(x for x in text.splitlines() if x.startswith("dicomweb_changefeed_waiters "))
    return int(float(line.split()[1]))


def test_a_long_poll_is_answered_by_the_next_stow(server: ServerProcess) -> None:
    url = server.url
    start = latest_sequence(url)
    thread, result = _wait_in_thread(url, start, 50)
    _until(lambda: waiters(url) >= 1)
    assert not result
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    assert stow(url, [instance(study, series, sop)]).status_code == 200
    thread.join(60)
    assert result["status"] == 200 and result["took"] < 40
    assert summary(result["entries"]) == [(sop, "Create", "Current")]


def test_a_long_poll_with_nothing_new_answers_an_empty_page_after_its_timeout(server: ServerProcess) -> None:
    url = server.url
    start = latest_sequence(url)
    began = time.monotonic()
    response = requests.get(f"{url}/changefeed", params={"offset": str(start + 1000), "timeout": "0.5"}, timeout=30)
    assert response.status_code == 200 and response.json() == []
    assert time.monotonic() - began >= 0.45


@pytest.fixture
def restartable(fresh_server: ServerProcess) -> Iterator[ServerProcess]:
    fresh_server.extra += ["--changefeed-waiters", "2"]
    with fresh_server:
        yield fresh_server


def test_sequences_survive_a_restart_and_go_on_from_where_they_were(restartable: ServerProcess) -> None:
    url = restartable.url
    assert requests.get(f"{url}/changefeed/latest", timeout=30).json() == {}
    assert feed(url, 0) == []
    first = store_study(url, (("CT", 3),))
    before = all_after(url, 0, 2, includemetadata="false")  # (metadata links name the port, which changes)
    assert [e["Sequence"] for e in before] == [1, 2, 3]
    restartable.stop()
    restartable.start()
    url = restartable.url
    assert all_after(url, 0, 2, includemetadata="false") == before
    second = store_study(url, (("CT", 2),))
    entries = all_after(url, 3)
    assert [e["Sequence"] for e in entries] == [4, 5]
    assert sorted(e["SopInstanceUid"] for e in entries) == sorted(second.series[0].sops)
    assert first.uid != second.uid


def test_waiters_beyond_the_bound_get_503_with_retry_after(restartable: ServerProcess) -> None:
    url = restartable.url
    threads = [_wait_in_thread(url, 0, 50) for _ in range(2)]
    _until(lambda: waiters(url) >= 2)
    response = requests.get(f"{url}/changefeed", params={"offset": 0, "timeout": 30}, timeout=30)
    assert response.status_code == 503 and response.headers["retry-after"]
    assert "waiters" in response.text
    assert feed(url, 0) == []  # a read that does not wait is served
    study = store_study(url, (("CT", 1),))
    for thread, result in threads:
        thread.join(60)
        assert result["status"] == 200
        assert [e["SopInstanceUid"] for e in result["entries"]] == study.series[0].sops


def _as_version_4(server: ServerProcess) -> None:
    """Make the stopped server's store what a schema 4 server wrote: no feed."""
    if "--couchdb" not in server.extra:
        conn = sqlite3.connect(os.path.join(server.data_dir, "index.sqlite3"), isolation_level=None)
        downgrade_to_4(conn)
        conn.close()
        return
    couch, db = server.extra[server.extra.index("--couchdb") + 1], server.extra[server.extra.index("--couchdb-db") + 1]
    rows = requests.get(f"{couch}/{db}/_all_docs", params={"include_docs": "true"}, timeout=60).json()["rows"]
    writes = []
    for row in rows:
        doc = row["doc"]
        if doc["_id"][:2] in ("e:", "c:"):
            writes.append({"_id": doc["_id"], "_rev": doc["_rev"], "_deleted": True})
        elif doc["_id"].startswith("i:") and "ev" in doc:
            del doc["ev"]
            writes.append(doc)
    assert requests.post(f"{couch}/{db}/_bulk_docs", json={"docs": writes}, timeout=60).ok
    site = requests.get(f"{couch}/{db}/_local/dicomweb-changefeed", timeout=10).json()
    assert requests.delete(f"{couch}/{db}/_local/dicomweb-changefeed", params={"rev": site["_rev"]}, timeout=10).ok
    schema = requests.get(f"{couch}/{db}/_local/dicomweb-schema", timeout=10).json()
    schema["version"] = 4
    assert requests.put(f"{couch}/{db}/_local/dicomweb-schema", json=schema, timeout=10).ok


def test_an_upgraded_store_starts_its_feed_with_a_create_per_instance(fresh_server: ServerProcess) -> None:
    with fresh_server:
        study = store_study(fresh_server.url)
        assert requests.delete(f"{fresh_server.url}/studies/{study.uid}/series/{study.series[1].uid}",
                               timeout=60).status_code == 204
        fresh_server.stop()
        _as_version_4(fresh_server)
        fresh_server.start()
        entries = all_after(fresh_server.url, 0, 2)
        assert [e["Sequence"] for e in entries] == [1, 2, 3]
        assert sorted(e["SopInstanceUid"] for e in entries) == sorted(study.series[0].sops)
        assert {(e["Action"], e["State"]) for e in entries} == {("Create", "Current")}
        assert all(e["Metadata"]["0020000E"]["Value"] == [study.series[0].uid] for e in entries)
        # Afterwards the feed goes on as usual.
        assert requests.delete(f"{fresh_server.url}/studies/{study.uid}", timeout=60).status_code == 204
        assert sorted(summary(feed(fresh_server.url, 3))) == sorted((s, "Delete", "Deleted") for s in study.series[0].sops)


def test_two_frontends_writing_at_once_number_every_event_once_and_agree(
        couch_server: couchdb.CouchServer, tmp_path: os.PathLike[str]) -> None:
    db = "feed-" + uuid.uuid4().hex[:8]
    procs = [ServerProcess(os.path.join(tmp_path, n), os.path.join(tmp_path, n + ".log"),
                           "--couchdb", couch_server.url, "--couchdb-db", db) for n in ("a", "b")]
    with procs[0] as a, procs[1] as b:
        study = generate_uid()
        seen: list[dict[str, Any]] = []

        def consume(stop: threading.Event) -> None:
            """Read pages alternately from both frontends, each after the last sequence seen."""
            n = 0
            while True:
                done = stop.is_set()
                page = feed((a, b)[n % 2].url, seen[-1]["Sequence"] if seen else 0, 7, includemetadata="false")
                seen.extend(page)
                n += 1
                if done and not page:
                    return

        def client(n: int) -> list[str]:
            series = generate_uid()
            parts = [dicomgen.ct_instance(study, series, i, size=16) for i in range(1, 4)]
            sops: list[str] = []
            for part in parts:
                response = stow((a, b)[n % 2].url, [part])
                assert response.status_code == 200, response.text
                sops += referenced(response.json())
            return sops

        stop = threading.Event()
        reader = threading.Thread(target=consume, args=(stop,))
        reader.start()
        with ThreadPoolExecutor(6) as pool:
            stored = [sop for sops in pool.map(client, range(6)) for sop in sops]
        stop.set()
        reader.join(120)
        assert [e["Sequence"] for e in seen] == list(range(1, len(stored) + 1))
        assert sorted(e["SopInstanceUid"] for e in seen) == sorted(stored)
        assert all_after(a.url, 0, includemetadata="false") == all_after(b.url, 0, includemetadata="false") == seen
    for proc in procs:
        assert "Traceback" not in proc.log(), proc.log()[-3000:]


def test_couch_a_stow_cut_short_before_its_event_gets_it_from_the_journal_sweep(
        couch_server: couchdb.CouchServer, tmp_path: os.PathLike[str]) -> None:
    db = "feed-" + uuid.uuid4().hex[:8]
    proc = ServerProcess(os.path.join(tmp_path, "f"), os.path.join(tmp_path, "f.log"),
                         "--couchdb", couch_server.url, "--couchdb-db", db)
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    with proc:
        assert stow(proc.url, [instance(study, series, sop)]).status_code == 200
    # What a frontend killed between writing the instance document (a new
    # version, token "cut") and writing its event leaves: the document and the
    # batch's journal.
    base = f"{couch_server.url}/{db}"
    doc = requests.get(f"{base}/i:{sop}", timeout=10).json()
    doc["ev"] = "cut"
    assert requests.put(f"{base}/i:{sop}", json=doc, timeout=10).ok
    journal: dict[str, Any] = {"doctype": "journal", "at": time.time(), "studies": [study], "docs": [f"i:{sop}"],
                               "removed": []}
    assert requests.post(base, json=journal, timeout=10).ok
    with proc:  # the sweep at start repairs the batch
        entries = feed(proc.url, 0, includemetadata="false")
    assert summary(entries) == [(sop, "Create", "Replaced"), (sop, "Create", "Current")]


def _events(response: requests.Response) -> Iterator[tuple[int, dict[str, Any]]]:
    """(id, entry) of each event of a text/event-stream response, as they arrive."""
    fields: dict[str, str] = {}
    for raw in response.iter_lines():
        line = raw.decode("utf-8")
        if line:
            if not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        elif "data" in fields:
            yield int(fields["id"]), json.loads(fields["data"])
            fields = {}


def test_server_sent_events_give_the_past_then_each_new_event_as_it_comes(server: ServerProcess) -> None:
    url = server.url
    study, series = generate_uid(), generate_uid()
    first, second = generate_uid(), generate_uid()
    assert stow(url, [instance(study, series, first)]).status_code == 200
    start = latest_sequence(url) - 1
    with requests.get(f"{url}/changefeed", params={"offset": str(start), "includemetadata": "false"},
                      headers={"Accept": "text/event-stream"}, stream=True, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        events = _events(response)
        assert next(events) == (start + 1, feed(url, start, includemetadata="false")[0])
        assert stow(url, [instance(study, series, second)]).status_code == 200
        number, entry = next(events)
        assert (number, entry["SopInstanceUid"], entry["Action"]) == (start + 2, second, "Create")
    # A reconnecting client names the last event it had.
    with requests.get(f"{url}/changefeed", headers={"Accept": "text/event-stream", "Last-Event-ID": str(start + 1)},
                      params={"includemetadata": "false"}, stream=True, timeout=60) as response:
        assert next(_events(response))[0] == start + 2
    _until(lambda: waiters(url) == 0)  # the streams end when their clients go


def test_couch_a_hole_left_in_the_numbering_is_filled_and_never_skipped(
        couch_server: couchdb.CouchServer, tmp_path: os.PathLike[str]) -> None:
    db = "feed-" + uuid.uuid4().hex[:8]
    proc = ServerProcess(os.path.join(tmp_path, "f"), os.path.join(tmp_path, "f.log"),
                         "--couchdb", couch_server.url, "--couchdb-db", db)
    with proc:
        store_study(proc.url, (("CT", 3),))
        before = all_after(proc.url, 0, includemetadata="false")
    # What a frontend killed in the middle of its bulk write of entries 2 and 3 may leave.
    base = f"{couch_server.url}/{db}"
    site = requests.get(f"{base}/_local/dicomweb-changefeed", timeout=10).json()["site"]
    entry = requests.get(f"{base}/c:{site}:000000000002", timeout=10).json()
    assert requests.delete(f"{base}/c:{site}:000000000002", params={"rev": entry["_rev"]}, timeout=10).ok
    with proc:  # the restarted frontend goes on from before the hole and fills it with the same event
        assert all_after(proc.url, 0, 1, includemetadata="false") == before
