"""Change feed: read throughput and STOW-to-consumer latency, embedded and CouchDB stores.

For each store (embedded; CouchDB = pouchdb-server, LevelDB on disk, from
node_modules: ``npm ci --ignore-scripts``) it starts ``twistd dicomweb``, stores
``--events`` small instances through STOW (requests of 50), then:

- **read**: reads the whole feed through ``GET /changefeed`` in pages of 200
  (each page asked after the last sequence seen), with and without
  ``includemetadata``, and prints events/s (the first read on CouchDB also numbers
  the events, so it is shown apart from a second read);
- **latency**: a consumer thread waits with ``GET /changefeed?offset=N&timeout=30``;
  the main thread stores one instance at a time and, once the STOW is
  acknowledged, waits until the consumer has seen its event. Latency = the time
  the consumer got the entry minus the time the STOW response arrived
  (negative: the consumer was woken before the STOW client read its answer),
  and minus the time the STOW was sent. p50 / p99 over ``--samples`` STOWs.

    python bench/changefeed.py [--quick] [--events 2000] [--samples 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import requests
from pydicom.uid import generate_uid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import couchdb, dicomgen
from tests.httpclient import multipart_body
from tests.server import ServerProcess


def stow(session: requests.Session, url: str, parts: list[bytes]) -> None:
    body, boundary = multipart_body(parts)
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = session.post(f"{url}/studies", data=body, headers={"Content-Type": content_type}, timeout=300)
    response.raise_for_status()


def store_events(url: str, count: int) -> None:
    session = requests.Session()
    study, series = generate_uid(), generate_uid()
    parts = [dicomgen.ct_instance(study, series, n, size=16, seed=n) for n in range(1, count + 1)]
    for start in range(0, count, 50):
        stow(session, url, parts[start:start + 50])


def read_all(url: str, metadata: bool) -> tuple[int, float]:
    """(events read, seconds) for the whole feed in pages of 200."""
    session = requests.Session()
    offset, count = 0, 0
    started = time.perf_counter()
    while True:
        page = session.get(f"{url}/changefeed", params={"offset": str(offset), "limit": "200",
                                                        "includemetadata": str(metadata).lower()}, timeout=120).json()
        count += len(page)
        if len(page) < 200:
            return count, time.perf_counter() - started
        offset = page[-1]["Sequence"]


class Consumer(threading.Thread):
    """Long-polls the feed from ``offset`` and notes when each SOP Instance UID was seen."""

    def __init__(self, url: str, offset: int) -> None:
        super().__init__(daemon=True)
        self.url, self.offset = url, offset
        self.seen: dict[str, float] = {}
        self.changed = threading.Condition()
        self.stopping = False

    def run(self) -> None:
        session = requests.Session()
        while not self.stopping:
            try:
                page = session.get(f"{self.url}/changefeed", params={
                    "offset": str(self.offset), "timeout": "5", "includemetadata": "false", "limit": "200"},
                    timeout=60).json()
            except requests.ConnectionError:
                if self.stopping:
                    return  # the server stopped under a waiting request
                raise
            now = time.perf_counter()
            with self.changed:
                for entry in page:
                    self.seen.setdefault(entry["SopInstanceUid"], now)
                    self.offset = entry["Sequence"]
                self.changed.notify_all()

    def wait_for(self, sop: str) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: sop in self.seen, timeout=60):
                raise RuntimeError("the consumer never saw an acknowledged instance")
            return self.seen[sop]


def latencies(url: str, samples: int) -> tuple[list[float], list[float]]:
    """Seconds from each STOW sent, and from its response, to the consumer seeing it."""
    latest = requests.get(f"{url}/changefeed/latest", params={"includemetadata": "false"}, timeout=30).json()
    consumer = Consumer(url, int(latest.get("Sequence", 0)))
    consumer.start()
    session = requests.Session()
    study, series = generate_uid(), generate_uid()
    sent, acked = [], []
    for n in range(samples):
        sop = generate_uid()
        part = dicomgen.ct_instance(study, series, n + 1, size=16, sop_uid=sop, seed=n)
        started = time.perf_counter()
        stow(session, url, [part])
        done = time.perf_counter()
        seen = consumer.wait_for(sop)
        sent.append(seen - started)
        acked.append(seen - done)
    consumer.stopping = True
    return sent, acked


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300 events, 40 latency samples")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    if args.quick:
        args.events, args.samples = 300, 40
    if not couchdb.available():
        sys.exit("pouchdb-server is not installed: run npm ci --ignore-scripts")
    rows: list[tuple[Any, ...]] = []
    with tempfile.TemporaryDirectory() as tmp, couchdb.CouchServer(os.path.join(tmp, "pouch"), in_memory=False) as couch:
        for store, extra in (("embedded", []), ("couch", ["--couchdb", couch.url, "--couchdb-db", "bench"])):
            with ServerProcess(os.path.join(tmp, store), os.path.join(tmp, store + ".log"), *extra) as proc:
                store_events(proc.url, args.events)
                first = read_all(proc.url, metadata=False)
                bare = read_all(proc.url, metadata=False)
                full = read_all(proc.url, metadata=True)
                assert first[0] == bare[0] == full[0] == args.events, (first, bare, full)
                sent, acked = ([x * 1000 for x in xs] for xs in latencies(proc.url, args.samples))
                rows.append((store, first[0] / first[1], bare[0] / bare[1], full[0] / full[1],
                             statistics.median(acked), percentile(acked, 0.99),
                             statistics.median(sent), percentile(sent, 0.99)))
    print(f"\n{args.events} events (small CT instances, STOW requests of 50); {args.samples} latency samples")
    print(f"{'':9} {'read events/s':^44} | {'ms to the waiting consumer, p50 / p99':^40}")
    print(f"{'store':9} {'first read':>12} {'no metadata':>12} {'with metadata':>14}   | "
          f"{'from STOW response':>20} {'from STOW sent':>18}")
    for store, first_rate, bare_rate, full_rate, a50, a99, s50, s99 in rows:
        print(f"{store:9} {first_rate:12.0f} {bare_rate:12.0f} {full_rate:14.0f}   | "
              f"{a50:9.1f} / {a99:<8.1f} {s50:8.1f} / {s99:<8.1f}")
    print("(from STOW response < 0: the consumer had the event before the STOW client had its answer)")


if __name__ == "__main__":
    main()
