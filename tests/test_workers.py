"""``--workers 2``: one real supervisor process (``twistd -n dicomweb``) and
its two worker processes on one listening socket, on each store.

Requests land on both workers; what one worker stored, the other answers at
once; concurrent STOWs into one study through both keep the aggregates
exact; ``/metrics`` adds up both; a worker killed with SIGKILL is replaced
while the service keeps answering; SIGTERM to the supervisor answers the
request in flight, stops every worker with exit status 0 and leaves no
process behind; the startup work (spool clearing, CouchDB journal repair)
runs once, in the supervisor, and not again when a worker restarts. Also:
TLS on the adopted socket, DIMSE in every worker on the supervisor's socket
across a restart, a busy port failing the start, workers stopping by
themselves when their supervisor is killed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid

from tests import couchdb, dicomgen
from tests.conftest import STORES
from tests.httpclient import json_of, multipart_body, referenced, stow
from tests.server import ServerProcess


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc)."""
    out = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as fp:
                fields = fp.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(name))
    return out


def wait_for(condition: Callable[[], object], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(url + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by_worker(url: str) -> dict[str, float]:
    return {dict(labels)["worker"]: value for (name, labels), value in samples(url).items()
            if name == "dicomweb_worker_http_requests_total"}


def health_count(url: str) -> float:
    key = ("dicomweb_http_requests_total", (("method", "GET"), ("route", "/health"), ("status", "200")))
    return samples(url).get(key, 0.0)


def start_workers(tmp: str, store: str, request: pytest.FixtureRequest) -> ServerProcess:
    """A ``--workers 2`` server with leftovers of an earlier crash for its
    startup work: a file in the embedded spool, a CouchDB journal."""
    data = os.path.join(tmp, "data")
    extra = ["--workers", "2"]
    if store == "embedded":
        os.makedirs(os.path.join(data, "spool"))
        with open(os.path.join(data, "spool", "left-by-a-crash"), "wb") as fp:
            fp.write(b"never acknowledged")
    else:
        couch: couchdb.CouchServer = request.getfixturevalue("couch_server")
        db = "workers-" + uuid.uuid4().hex[:12]
        requests.put(f"{couch.url}/{db}", timeout=10).raise_for_status()
        requests.post(f"{couch.url}/{db}", json={"doctype": "journal", "at": time.time(), "studies": ["1.2.3.4"]},
                      timeout=10).raise_for_status()
        extra += ["--couchdb", couch.url, "--couchdb-db", db]
    server = ServerProcess(data, os.path.join(tmp, "server.log"), "--max-request-size", "64M", *extra)
    server.start()
    assert server.proc is not None
    wait_for(lambda: len(children(server.proc.pid)) == 2, what="two workers")  # type: ignore[union-attr]
    wait_for(lambda: server.log().count("MeteredSite starting on") == 2, what="both workers listening")
    return server


@pytest.fixture(scope="module", params=STORES)
def workers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_workers(str(tmp_path_factory.mktemp(f"workers-{request.param}")), request.param, request)
    server.store = request.param  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_the_startup_work_runs_once_in_the_supervisor(workers: ServerProcess) -> None:
    log = workers.log()
    if workers.store == "embedded":  # type: ignore[attr-defined]
        assert not os.path.exists(os.path.join(workers.data_dir, "spool", "left-by-a-crash"))
    else:
        assert log.count("repaired the aggregates of 1 interrupted batches") == 1
    assert log.count("starting 2 worker processes") == 1


def test_requests_spread_over_both_workers_and_metrics_add_them_up(workers: ServerProcess) -> None:
    before_total, before = health_count(workers.url), by_worker(workers.url)
    sent = 0
    while sent < 20 or not all(by_worker(workers.url).get(w, 0) > before.get(w, 0) for w in ("0", "1")):
        assert sent < 400, by_worker(workers.url)
        requests.get(workers.url + "/health", timeout=10).raise_for_status()  # a new connection each time
        sent += 1
    assert health_count(workers.url) - before_total == sent  # every worker's requests, counted once


def test_what_one_worker_stored_every_worker_answers_at_once(workers: ServerProcess) -> None:
    study = generate_uid()
    for n in range(8):
        series = generate_uid()
        [part] = dicomgen.ct_series(1, study_uid=study, series_uid=series, size=16)
        response = stow(workers.url, [part])
        assert response.status_code == 200, response.text
        [sop] = referenced(json_of(response))
        found = requests.get(f"{workers.url}/studies/{study}/series/{series}/instances", timeout=10)
        assert [i["00080018"]["Value"][0] for i in found.json()] == [sop]
        study_row = requests.get(f"{workers.url}/studies", params={"StudyInstanceUID": study}, timeout=10).json()
        assert study_row[0]["00201208"]["Value"] == [n + 1]
        metadata = requests.get(f"{workers.url}/studies/{study}/series/{series}/instances/{sop}/metadata",
                                timeout=10)
        assert metadata.status_code == 200
        # Each worker keeps compressed study metadata by entity tag: never a stale one.
        assert len(requests.get(f"{workers.url}/studies/{study}/metadata", timeout=10).json()) == n + 1


def test_concurrent_stows_through_both_workers_keep_the_aggregates_exact(workers: ServerProcess) -> None:
    study = generate_uid()
    series = [generate_uid() for _ in range(3)]
    stored_before = samples(workers.url).get(("dicomweb_instances_stored_total", (("outcome", "stored"),)), 0.0)

    def one(n: int) -> int:
        parts = list(dicomgen.ct_series(2, study_uid=study, series_uid=series[n % 3], size=16))
        response = stow(workers.url, parts)
        assert response.status_code == 200, response.text
        return len(referenced(json_of(response)))

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(one, range(12))) == 24
    [row] = requests.get(f"{workers.url}/studies", params={"StudyInstanceUID": study}, timeout=10).json()
    assert row["00201208"]["Value"] == [24] and row["00201206"]["Value"] == [3]
    rows = requests.get(f"{workers.url}/studies/{study}/series", timeout=10).json()
    assert sorted(r["00201209"]["Value"][0] for r in rows) == [8, 8, 8]
    stored = samples(workers.url)[("dicomweb_instances_stored_total", (("outcome", "stored"),))]
    assert stored - stored_before == 24


def test_a_change_feed_long_poll_on_one_worker_hears_a_stow_through_either(workers: ServerProcess) -> None:
    latest = requests.get(workers.url + "/changefeed/latest", params={"includemetadata": "false"}, timeout=10).json()
    offset = latest.get("Sequence", 0)
    for _ in range(4):  # each time a new long-poll and a new STOW connection: both workers take part
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(requests.get, workers.url + "/changefeed", timeout=60, params={
                "offset": str(offset), "timeout": "30", "includemetadata": "false"})
            wait_for(lambda: samples(workers.url).get(("dicomweb_changefeed_waiters", ()), 0) >= 1, what="a waiter")
            started = time.monotonic()
            [part] = dicomgen.ct_series(1, size=16)
            assert stow(workers.url, [part]).status_code == 200
            events = waiting.result().json()
        assert len(events) == 1 and events[0]["Action"] == "Create"
        assert time.monotonic() - started < 15  # woken (or polling every second), not the 30 s timeout
        offset = events[0]["Sequence"]


def test_a_killed_worker_is_replaced_and_the_service_keeps_answering(workers: ServerProcess) -> None:
    assert workers.proc is not None
    parent = workers.proc.pid
    # Received after the start: a restarted worker must leave the shared spool alone.
    marker = os.path.join(workers.data_dir, "spool", "a-sibling-receiving")
    if workers.store == "embedded":  # type: ignore[attr-defined]
        with open(marker, "wb") as fp:
            fp.write(b"in flight")
    before = children(parent)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in children(parent), what="the killed worker gone")
    for _ in range(10):
        requests.get(workers.url + "/health", timeout=10).raise_for_status()
    wait_for(lambda: len(children(parent)) == 2, what="a replacement worker")
    assert children(parent) - before
    wait_for(lambda: workers.log().count("MeteredSite starting on") == 3, what="the replacement listening")
    assert "restarting in" in workers.log()
    if workers.store == "embedded":  # type: ignore[attr-defined]
        assert os.path.exists(marker)
        os.unlink(marker)


@pytest.mark.parametrize("store", STORES)
def test_sigterm_answers_the_request_in_flight_then_stops_everything(
        store: str, request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> None:
    server = start_workers(str(tmp_path), store, request)
    assert server.proc is not None
    parent, workers = server.proc.pid, children(server.proc.pid)
    body, boundary = multipart_body(list(dicomgen.ct_series(1, size=16)))
    head = (f"POST /studies HTTP/1.1\r\nHost: x\r\nAccept: application/dicom+json\r\nContent-Type: multipart/related; "
            f'type="application/dicom"; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n').encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(head + body[:100])  # a STOW in flight: its body half sent
        # In flight: this one and the /metrics request asking.
        wait_for(lambda: samples(server.url).get(("dicomweb_http_requests_in_flight", ()), 0) >= 2,
                 what="the STOW in flight")
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "waiting for 1 requests in flight" in server.log(), what="the drain")
        client.sendall(body[100:])
        answer = b""
        while b"\r\n\r\n" not in answer and (data := client.recv(65536)):
            answer += data
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    # twistd ends by the signal that stopped it, after a clean stop (as a
    # single-process server does); each worker exits 0.
    assert server.proc.wait(30) == -signal.SIGTERM
    assert all(_is_zombie_or_gone(pid) for pid in workers) and not children(parent)
    assert server.log().count("stopped (exit code 0)") == 2 and "all workers stopped" in server.log()
    if store == "embedded":  # marked closed cleanly by the supervisor, closed last
        assert os.path.exists(os.path.join(server.data_dir, "index.closed-cleanly"))
        assert "index checked" not in server.log()


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fp:
            return fp.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_workers_serve_tls_on_the_adopted_socket(tmp_path: os.PathLike[str]) -> None:
    from tests.security_fixtures import write_tls_files

    tls = write_tls_files(Path(tmp_path))
    port = f"ssl:0:interface=127.0.0.1:privateKey={tls.key}:certKey={tls.cert}"
    server = ServerProcess(os.path.join(tmp_path, "data"), os.path.join(tmp_path, "server.log"),
                           "--workers", "2", "--port", port)
    server.scheme, server.verify = "https", tls.ca
    # ServerProcess gives its own --port first; the later one wins.
    with server:
        wait_for(lambda: server.log().count("MeteredSite (TLS) starting on") == 2, what="both workers on TLS")
        seen: set[str] = set()
        for _ in range(200):
            with requests.Session() as session:
                session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
                session.get(server.url + "/health", verify=tls.ca, timeout=10).raise_for_status()
            seen = {w for w, n in by_worker_tls(server.url, tls.ca).items() if n}
            if seen == {"0", "1"}:
                break
        assert seen == {"0", "1"}
        # HTTP/2 by ALPN, offered by the site through the TLS wrapper of the adopted socket.
        import ssl

        import httpx

        with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=tls.ca), base_url=server.url,
                          timeout=30) as client:
            assert client.get("/health").http_version == "HTTP/2"


def by_worker_tls(url: str, ca: str) -> dict[str, float]:
    with requests.Session() as session:
        session.trust_env = False
        text = session.get(url + "/metrics", verify=ca, timeout=10).text
    return {s.labels["worker"]: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "dicomweb_worker_http_requests_total"}


def test_dimse_runs_in_every_worker_on_the_supervisors_socket_across_a_restart(tmp_path: os.PathLike[str]) -> None:
    from tests.dimse_helpers import VERIFICATION, DimseServer, associate, c_store

    with DimseServer(os.path.join(tmp_path, "data"), os.path.join(tmp_path, "server.log"), "--workers", "2") as server:
        wait_for(lambda: server.log().count("DIMSE listener (AE") == 2, what="both workers on DIMSE")
        study = generate_uid()
        [part] = dicomgen.ct_series(1, study_uid=study, size=16)
        assert c_store(server.dimse_port, part).Status == 0
        for _ in range(4):  # stored through DIMSE, seen by whichever worker answers
            assert requests.get(f"{server.url}/studies/{study}/series", timeout=10).status_code == 200
        worker0 = int(re.findall(r"worker 0 started \(pid (\d+)\)", server.log())[-1])
        os.kill(worker0, signal.SIGKILL)
        # Requested while worker 0 is down: worker 1 (or the socket's queue) takes it.
        assoc = associate(server.dimse_port, [(VERIFICATION, [])])
        try:
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0
        finally:
            assoc.release()
        wait_for(lambda: server.log().count("DIMSE listener (AE") == 3, what="worker 0's replacement on DIMSE")


def test_workers_option_takes_a_count_or_auto() -> None:
    from dicomweb.config import load_settings

    assert load_settings({"workers": "3"}, environ={}).workers == 3
    assert load_settings({}, environ={}).workers == 1
    assert load_settings({"workers": "auto"}, environ={}).workers == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="--workers"):
        load_settings({"workers": "0"}, environ={})


def test_a_busy_port_fails_the_start_at_once(tmp_path: os.PathLike[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = ServerProcess(os.path.join(tmp_path, "data"), os.path.join(tmp_path, "server.log"),
                               "--workers", "2", "--port", f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1")
        with pytest.raises(RuntimeError, match="server exited"):
            server.start()
    assert "Address already in use" in server.log() and "worker 0 started" not in server.log()


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(tmp_path: os.PathLike[str]) -> None:
    server = start_workers(str(tmp_path), "embedded", None)  # type: ignore[arg-type]  # no couch needed
    assert server.proc is not None
    workers = children(server.proc.pid)
    server.kill()  # SIGKILL: no chance to stop them
    wait_for(lambda: all(_is_zombie_or_gone(pid) for pid in workers), what="the orphaned workers to exit")
