"""Sites and fleets on CouchDB: replication latency between two sites, and
STOW / QIDO with 1, 2 and 4 frontends on one CouchDB-API server.

1. Two pouchdb-servers (site A, site B; in memory) with continuous
   replication both ways (``_replicator`` documents), a frontend at each.
   One study at a time (2 small CT instances) is stored at A; the time from
   the STOW-RS acknowledgement to the study answering QIDO at B with both
   instances counted (B polled every 5 ms) is measured over ``--studies``.
2. One pouchdb-server (LevelDB on disk), ``k`` = 1, 2, 4 frontends on one
   new database each time; ``--clients`` threads store requests of
   ``--batch`` 64x64 CT instances round-robin over the frontends for
   ``--seconds``: instances/s acknowledged. Then QIDO
   ``/studies?PatientName=BENCH*&StudyDate=20240101-20241231`` round-robin
   over the frontends, ``--repeat`` times: p50.

    python bench/sites.py            # 100 studies, 20 s per fleet size
    python bench/sites.py --quick    # 20 studies, 6 s per fleet size
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from pydicom.uid import generate_uid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import couchdb, dicomgen
from tests.httpclient import multipart_body
from tests.server import ServerProcess

QIDO = {"PatientName": "BENCH*", "StudyDate": "20240101-20241231"}


def _post(url: str, parts: list[bytes]) -> requests.Response:
    body, boundary = multipart_body(parts)
    return requests.post(url + "/studies", data=body, timeout=120, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})


def _frontend(tmp: str, name: str, couch: couchdb.CouchServer, db: str) -> ServerProcess:
    return ServerProcess(os.path.join(tmp, name), os.path.join(tmp, name + ".log"),
                         "--couchdb", couch.url, "--couchdb-db", db)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def replication_latency(tmp: str, studies: int) -> list[float]:
    """Seconds from the acknowledgement at A to the study being searchable at B."""
    out: list[float] = []
    db = "bench-sites"
    with couchdb.TwoSites(os.path.join(tmp, "sites")) as sites:
        with _frontend(tmp, "site-a", sites.a, db) as a, _frontend(tmp, "site-b", sites.b, db) as b:
            sites.replicate(db)
            session = requests.Session()
            for n in range(studies):
                study, series = generate_uid(), generate_uid()
                parts = [dicomgen.ct_instance(study, series, k, size=64, patient_name="BENCH^SITES") for k in (1, 2)]
                response = _post(a.url, parts)
                acked = time.perf_counter()
                response.raise_for_status()
                deadline = acked + 60
                while True:
                    found = session.get(f"{b.url}/studies", params={"StudyInstanceUID": study}, timeout=30).json()
                    if found and found[0]["00201208"]["Value"] == [2]:
                        out.append(time.perf_counter() - acked)
                        break
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"study {n} did not reach site B within 60 s")
                    time.sleep(0.005)
    return out


def fleet(tmp: str, couch: couchdb.CouchServer, frontends: int, clients: int, batch: int, seconds: float,
          repeat: int) -> tuple[float, float]:
    """(STOW instances/s, QIDO p50 ms) with ``frontends`` on one new database."""
    db = f"bench-fleet-{frontends}-{generate_uid()[-8:]}"
    fronts = [_frontend(tmp, f"fleet{frontends}-{n}", couch, db) for n in range(frontends)]
    with ThreadPoolExecutor(frontends) as pool:
        list(pool.map(lambda f: f.start(60), fronts))
    try:
        urls = itertools.cycle([f.url for f in fronts])
        lock = threading.Lock()
        stop = threading.Event()
        acked = [0]

        def client(worker: int) -> None:
            study, number = generate_uid(), 0
            while not stop.is_set():
                series = generate_uid()
                parts = []
                for _ in range(batch):
                    number += 1
                    parts.append(dicomgen.ct_instance(study, series, number, size=64, seed=worker * 100000 + number,
                                                      patient_name=f"BENCH^W{worker}", study_date="20240615"))
                with lock:
                    url = next(urls)
                response = _post(url, parts)
                response.raise_for_status()
                with lock:
                    acked[0] += batch

        threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(seconds)  # the measuring window of a benchmark, not a wait for an event
        stop.set()
        for thread in threads:
            thread.join(120)
        rate = acked[0] / (time.perf_counter() - started)
        session = requests.Session()
        times = []
        for n in range(repeat):
            start = time.perf_counter()
            session.get(fronts[n % frontends].url + "/studies", params=QIDO, timeout=60).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
        return rate, statistics.median(times)
    finally:
        for front in fronts:
            front.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 studies, 6 s per fleet size, 20 QIDO")
    parser.add_argument("--studies", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeat", type=int)
    args = parser.parse_args()
    studies = args.studies or (20 if args.quick else 100)
    seconds = args.seconds or (6.0 if args.quick else 20.0)
    repeat = args.repeat or (20 if args.quick else 50)
    if not couchdb.available():
        sys.exit("pouchdb-server is not installed (npm ci --ignore-scripts)")
    with tempfile.TemporaryDirectory(prefix="bench-sites-") as tmp:
        latency = replication_latency(tmp, studies)
        print(f"site A -> site B, STOW ack to searchable at B ({studies} studies): "
              f"p50 {statistics.median(latency) * 1000:.0f} ms, p99 {_percentile(latency, 0.99) * 1000:.0f} ms, "
              f"max {max(latency) * 1000:.0f} ms", flush=True)
        with couchdb.CouchServer(os.path.join(tmp, "pouch"), in_memory=False) as couch:
            print(f"fleet on one pouchdb-server (LevelDB), {args.clients} clients, {args.batch} instances "
                  f"per request, {seconds:g} s per size:")
            for frontends in (1, 2, 4):
                rate, qido = fleet(tmp, couch, frontends, args.clients, args.batch, seconds, repeat)
                print(f"  {frontends} frontend(s): STOW {rate:.0f} instances/s, QIDO p50 {qido:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
