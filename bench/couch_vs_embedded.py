"""STOW throughput and QIDO / metadata / retrieve latency: CouchDB store beside the embedded one.

Starts pouchdb-server (LevelDB on disk, from node_modules: ``npm ci --ignore-scripts``)
and two ``twistd dicomweb`` servers (embedded, couch), stores the same generated
512x512 CT instances into each (requests of ``--batch``), then times GETs.

For the QIDO searches of ``bench/qido.py`` it then also stores ``--qido-instances``
small instances (64x64, 2 series of 50 per study, PatientName ``PAT{n:05d}^BENCH``,
StudyDate 2015-01-01 + 3n days) through STOW and times
(a) ``/studies?PatientName=PAT0000*&StudyDate=20150101-20191231`` and
(b) ``/instances?limit=1000``.

    python bench/couch_vs_embedded.py [--instances 400] [--batch 20] [--clients 4] [--repeat 30]
                                      [--qido-instances 1200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from pydicom.uid import generate_uid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.qido import QUERY_A, QUERY_B, instance_bytes, template
from tests import couchdb, dicomgen
from tests.httpclient import multipart_body
from tests.server import ServerProcess


def corpus(n: int, per_series: int) -> tuple[str, list[tuple[str, bytes]]]:
    study = generate_uid()
    out, series = [], generate_uid()
    for i in range(n):
        if i and i % per_series == 0:
            series = generate_uid()
        out.append((series, dicomgen.ct_instance(study, series, i + 1, size=512, seed=i)))
    return study, out


def stow_all(url: str, parts: list[bytes], batch: int, clients: int) -> float:
    bodies = []
    for i in range(0, len(parts), batch):
        body, boundary = multipart_body(parts[i:i + batch])
        bodies.append((body, f'multipart/related; type="application/dicom"; boundary={boundary}'))

    def send(item: tuple[bytes, str]) -> None:
        r = requests.post(url + "/studies", data=item[0], headers={"Content-Type": item[1],
                                                                     "Accept": "application/dicom+json"}, timeout=600)
        r.raise_for_status()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, bodies))
    return time.perf_counter() - start


def timed(session: requests.Session, url: str, repeat: int, **kwargs: object) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        r = session.get(url, timeout=120, **kwargs)  # type: ignore[arg-type]
        r.raise_for_status()
        _ = r.content
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-series", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--qido-instances", type=int, default=1200)
    args = parser.parse_args()
    if not couchdb.available():
        sys.exit("pouchdb-server is not installed: run npm ci --ignore-scripts")
    study, items = corpus(args.instances, args.per_series)
    parts = [p for _, p in items]
    size = sum(map(len, parts))
    print(f"corpus: {len(parts)} CT 512x512 instances, {size / 1e6:.0f} MB, one study, "
          f"{len({s for s, _ in items})} series; requests of {args.batch}, {args.clients} clients")
    rows = []
    qido_rows: list[tuple[str, tuple[float, float], tuple[float, float]]] = []
    with tempfile.TemporaryDirectory() as tmp, couchdb.CouchServer(os.path.join(tmp, "pouch"), in_memory=False) as couch:
        for store, extra in (("embedded", []), ("couch", ["--couchdb", couch.url, "--couchdb-db", "bench"])):
            proc = ServerProcess(os.path.join(tmp, store), os.path.join(tmp, store + ".log"), *extra)
            with proc:
                seconds = stow_all(proc.url, parts, args.batch, args.clients)
                session = requests.Session()
                series = items[0][0]
                sop = __import__("pydicom").dcmread(__import__("io").BytesIO(parts[0]), stop_before_pixels=True).SOPInstanceUID
                qido = timed(session, f"{proc.url}/studies", args.repeat, params={"StudyInstanceUID": study})
                qido_all = timed(session, f"{proc.url}/studies", args.repeat, params={"limit": "101"})
                meta = timed(session, f"{proc.url}/studies/{study}/series/{series}/metadata", args.repeat)
                inst = timed(session, f"{proc.url}/studies/{study}/series/{series}/instances/{sop}", args.repeat)
                frame = timed(session, f"{proc.url}/studies/{study}/series/{series}/instances/{sop}/frames/1",
                              args.repeat, headers={"Accept": FRAME_ACCEPT})
                rows.append((store, len(parts) / seconds, size / seconds / 1e6, qido, qido_all, meta, inst, frame))
                if args.qido_instances:
                    base = template()
                    small = [instance_bytes(base, n) for n in range(args.qido_instances)]
                    stow_all(proc.url, small, 100, args.clients)
                    search_a = timed(session, proc.url + QUERY_A, args.repeat)
                    search_b = timed(session, proc.url + QUERY_B, args.repeat)
                    qido_rows.append((store, search_a, search_b))
    print()
    print(f"{'store':9} {'STOW inst/s':>11} {'MB/s':>6} | median / p95 ms: {'QIDO by UID':>13} {'QIDO limit=101':>15} "
          f"{'series metadata':>16} {'instance retrieve':>18} {'one frame':>15}")
    for store, ips, mbs, *lat in rows:
        cells = " ".join(f"{m:7.1f}/{p:<7.1f}" for m, p in lat)
        print(f"{store:9} {ips:11.1f} {mbs:6.1f} | {'':16} {cells}")
    print(f"\n(series metadata = {args.per_series} instances; instance retrieve = one 512 KB instance, multipart; "
          "one frame = frames/1 of that instance as OHIF asks for it)")
    if qido_rows:
        print(f"\nQIDO with {args.qido_instances} more small instances ({args.qido_instances // 100} studies), "
              f"median / p95 ms:")
        print(f"{'store':9} {'(a) ' + QUERY_A:>62} {'(b) ' + QUERY_B:>28}")
        for store, a, b in qido_rows:
            print(f"{store:9} {a[0]:52.1f}/{a[1]:<9.1f} {b[0]:18.1f}/{b[1]:<9.1f}")


if __name__ == "__main__":
    main()
