"""Search and metadata latency as the embedded store grows: ``python bench/qido.py``.

Sizes 1,200, 100,000 and 1,000,000 instances (``--sizes``; ``--quick`` stops
at 100,000). At each size, over loopback HTTP with a keep-alive session, the
p50/p90 latency of

  (a) a study search with a name wildcard + date range:
      ``/studies?PatientName=PAT0000*&StudyDate=20150101-20191231``
      (10 matching studies at every size),
  (b) ``/studies?PatientID=PAT00007`` (one patient),
  (c) ``/studies/{s}/series`` (a study of 2 series),
  (d) ``/instances?limit=100&offset=N``, N half the store (deep in the order),
  (e) ``/instances?limit=1000`` (no filter),
  (f) the study metadata of a 600-instance study,

then STOW-RS instances/s into the store of that size (500 small instances
over HTTP in requests of 50; the empty-store figure is measured first), and
the index size per instance (SQLite file + WAL).

How the data gets in: instances are made from one pydicom template (16x16,
16-bit, ~1.3 kB) by patching fixed-length UIDs, names and dates into its
bytes, then each is analysed (the same parse STOW does) and stored with the
store API in-process, ``EmbeddedStore.store_batch``, 2,000 per batch (the
code STOW calls after reading the multipart body; HTTP is skipped to save
time: 1,000,000 instances take about 20 minutes this way). The data directory
is on /dev/shm when it exists: this disk takes ~9 ms per fsync and the store
fsyncs every file. The server is the real ``twistd -n dicomweb`` on that
directory. Results are appended to bench/REPORT.md.

Layout: study 0 holds 600 instances (6 series of 100, the metadata study);
every other study holds 2 series of 25 (so 1,000,000 instances make ~20,000
studies); study ``n`` has PatientName ``PAT{n:05d}^BENCH``, PatientID
``PAT{n:05d}`` and StudyDate 2015-01-01 + 3n days.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import requests  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402

from tests.server import ServerProcess  # noqa: E402

ROOT = "1.2.826.0.1.3680043.10.1"
BIG_STUDY, BIG_SERIES = 600, 100  # study 0: the metadata study
PER_SERIES, SERIES_PER_STUDY = 25, 2  # every other study
QUERIES = {
    "a": ("study search, name wildcard + date range", "/studies?PatientName=PAT0000*&StudyDate=20150101-20191231"),
    "b": ("/studies?PatientID=", "/studies?PatientID=PAT00007"),
    "c": ("/studies/{s}/series", "/studies/{study7}/series"),
    "d": ("/instances?limit=100&offset=N (N = half the store)", "/instances?limit=100&offset={half}"),
    "e": ("/instances?limit=1000", "/instances?limit=1000"),
    "f": ("study metadata, 600 instances", "/studies/{study0}/metadata"),
}
STOW_COUNT, STOW_BATCH = 500, 50
# Placeholders of the same length as the values patched in.
P_STUDY, P_SERIES, P_SOP = f"{ROOT}.1.1111111", f"{ROOT}.2.2222222222", f"{ROOT}.3.3333333333333"
P_NAME, P_DATE = "PAT99999^BENCH", "29991231"


def template() -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = P_SOP
    ds.StudyInstanceUID, ds.SeriesInstanceUID = P_STUDY, P_SERIES
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime = P_NAME, P_NAME[:8], P_DATE, "101500"
    ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber = "19700101", "O", "ACC"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, 1
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros((16, 16), np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def study_uid(study: int) -> str:
    return f"{ROOT}.1.{1000000 + study}"


def place(n: int) -> tuple[int, int]:
    """(study, series) numbers of instance ``n`` (0-based)."""
    if n < BIG_STUDY:
        return 0, n // BIG_SERIES
    rest = n - BIG_STUDY
    per_study = PER_SERIES * SERIES_PER_STUDY
    return 1 + rest // per_study, BIG_STUDY // BIG_SERIES + rest // PER_SERIES


def instance_bytes(base: bytes, n: int) -> bytes:
    """Instance ``n`` (0-based): the template with its UIDs, name and date patched."""
    study, series = place(n)
    day = (date(2015, 1, 1) + timedelta(days=3 * study)).strftime("%Y%m%d")
    values = {P_STUDY: study_uid(study), P_SERIES: f"{ROOT}.2.{1000000000 + series}",
              P_SOP: f"{ROOT}.3.{1000000000000 + n}", P_NAME: f"PAT{study:05d}^BENCH",
              P_NAME[:8]: f"PAT{study:05d}", P_DATE: day}
    data = base
    for old, new in values.items():
        assert len(old) == len(new)
        data = data.replace(old.encode(), new.encode())
    return data


async def load(data_dir: str, first: int, last: int) -> None:
    """Store instances first..last-1 through the store API; seconds taken."""
    from twisted.internet import reactor
    from twisted.python.threadpool import ThreadPool

    from dicomweb.dicom.analyze import analyze
    from dicomweb.store.base import StoreItem
    from dicomweb.store.embedded import EmbeddedStore

    pool = ThreadPool(1, 4)
    pool.start()
    store = EmbeddedStore(data_dir, reactor, pool)
    await store.open()
    base = template()
    try:
        for start in range(first, last, 2000):
            body = store.spool.temporary_file()
            items = []
            for n in range(start, min(start + 2000, last)):
                data = instance_bytes(base, n)
                offset = body.tell()
                body.write(data)
                items.append(StoreItem(analyze(io.BytesIO(data)), body, offset, len(data)))
            body.flush()  # the store reads the spool file by offset, below Python's buffer
            outcomes = await store.store_batch(items)
            assert all(o.outcome != "failed" for o in outcomes), outcomes[:3]
            body.close()
            print(f"  stored {min(start + 2000, last):,}", end="\r", flush=True)
    finally:
        await store.close()
        pool.stop()


def run_load(data_dir: str, first: int, last: int) -> float:
    """Load in a child process: a Twisted reactor cannot be started twice."""
    import subprocess

    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--load", data_dir, str(first), str(last)], check=True)
    return time.perf_counter() - started


def _load_main(data_dir: str, first: int, last: int) -> None:
    from twisted.internet import defer, task

    task.react(lambda reactor: defer.ensureDeferred(load(data_dir, first, last)))


def measure(url: str, path: str, runs: int) -> tuple[float, float, int]:
    session = requests.Session()
    count = 0
    for _ in range(3):  # warm up caches and the connection
        response = session.get(url + path, timeout=120)
        response.raise_for_status()
        count = len(response.json())
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = session.get(url + path, timeout=60)
        response.content  # noqa: B018 - the whole body, as a client waits for it
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1], count


def stow_rate(url: str, base: bytes, first: int) -> float:
    """STOW-RS instances/s: STOW_COUNT new instances (numbers from ``first``)
    in requests of STOW_BATCH; only the requests are timed, not making the
    instances."""
    from tests.httpclient import stow

    elapsed = 0.0
    for start in range(first, first + STOW_COUNT, STOW_BATCH):
        parts = [instance_bytes(base, n) for n in range(start, start + STOW_BATCH)]
        started = time.perf_counter()
        response = stow(url, parts)
        elapsed += time.perf_counter() - started
        assert response.status_code == 200, response.text[:300]
    return STOW_COUNT / elapsed


def index_bytes(data_dir: str) -> int:
    path = os.path.join(data_dir, "index.sqlite3")
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def figures(data_dir: str, log: str, stored: int, runs: int, stow_from: int) -> dict[str, Any]:
    """Latencies of every query, then STOW into the store of that size."""
    values = {"study0": study_uid(0), "study7": study_uid(7), "half": stored // 2}
    out: dict[str, Any] = {}
    with ServerProcess(data_dir, log) as server:
        for key, (label, path) in QUERIES.items():
            p50, p90, count = out[key] = measure(server.url, path.format(**values), runs)
            print(f"  {stored:>9,}  ({key}) {label:<52} p50 {p50:8.2f} ms  p90 {p90:8.2f} ms  ({count})", flush=True)
        out["stow"] = stow_rate(server.url, template(), stow_from)
    out["index"] = index_bytes(data_dir) / (stored + STOW_COUNT)
    print(f"  {stored:>9,}  STOW {out['stow']:.0f} instances/s; index {out['index']:.0f} bytes per instance",
          flush=True)
    return out


def report(rows: dict[int, dict[str, Any]], empty_stow: float, loads: dict[int, float]) -> str:
    sizes = sorted(rows)
    first = sizes[0]
    head = "| measure | " + " | ".join(f"{n:,}" for n in sizes) + f" | {sizes[-1]:,} / {first:,} | target |"
    lines = [head, "|---" * (len(sizes) + 3) + "|"]
    for key, (label, _path) in QUERIES.items():
        cells = " | ".join(f"{rows[n][key][0]:.2f} ms" for n in sizes)
        ratio = rows[sizes[-1]][key][0] / rows[first][key][0]
        lines.append(f"| ({key}) {label}, p50 | {cells} | {ratio:.2f}x | <= 2x |")
    cells = " | ".join(f"{rows[n]['stow']:.0f}" for n in sizes)
    lines.append(f"| STOW-RS instances/s (empty store: {empty_stow:.0f}) | {cells} | "
                 f"{rows[sizes[-1]]['stow'] / empty_stow:.0%} of empty | >= 80% of empty |")
    cells = " | ".join(f"{rows[n]['index']:.0f}" for n in sizes)
    lines.append(f"| index bytes per instance | {cells} | | |")
    cells = " | ".join(f"{loads[n]:.0f} s" for n in sizes)
    lines.append(f"| load time in-process (cumulative steps) | {cells} | | |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--load"]:
        _load_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1200,100000,1000000")
    parser.add_argument("--quick", action="store_true", help="sizes 1,200 and 100,000")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    parser.add_argument("--no-report", action="store_true", help="do not append to bench/REPORT.md")
    args = parser.parse_args()
    sizes = [1200, 100_000] if args.quick else [int(x) for x in args.sizes.split(",")]
    work = tempfile.mkdtemp(prefix="qido-bench-", dir=args.dir)
    data_dir, log = os.path.join(work, "data"), os.path.join(work, "server.log")
    # Instances STOWed by the benchmark get numbers far above every loaded one.
    stow_next = 4_000_000  # study numbers stay below 100,000 (five-digit names)
    rows: dict[int, dict[str, Any]] = {}
    loads: dict[int, float] = {}
    try:
        with ServerProcess(data_dir, log) as server:
            empty = stow_rate(server.url, template(), stow_next)
            stow_next += STOW_COUNT
        print(f"STOW into the empty store: {empty:.0f} instances/s")
        loaded = 0
        for size in sizes:
            print(f"loading up to {size:,} instances into {data_dir}", flush=True)
            loads[size] = run_load(data_dir, loaded, size)
            loaded = size
            print(f"  {loads[size]:.1f} s")
            rows[size] = figures(data_dir, log, size, args.runs, stow_next)
            stow_next += STOW_COUNT
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = report(rows, empty, loads)
    print()
    print(table)
    if not args.no_report:
        with open(os.path.join(REPO, "bench", "REPORT.md"), "a") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            out.write(f"\n## {stamp} — `python bench/qido.py {' '.join(sys.argv[1:])}`\n\n"
                      f"- machine: {os.cpu_count()} cores; data on {args.dir or 'disk'}\n\n{table}\n")


if __name__ == "__main__":
    main()
