"""QIDO-RS latency on the embedded store: ``python bench/qido.py``.

Measures the p50 (and p90) HTTP latency of

  (a) a filtered study search: ``/studies?PatientName=PAT0000*&StudyDate=20150101-20191231``
      (10 matching studies at every size), and
  (b) ``/instances?limit=1000`` with no filter,

with 1,200 and then 100,000 small (64x64, 16-bit) instances stored.

How the data gets in: instances are made from one pydicom template by
patching fixed-length UIDs, names and dates into its bytes, then each is
analysed (the same parse STOW does) and stored with the store API in-process,
``EmbeddedStore.store_batch``, 2,000 per batch (the code STOW calls after
reading the multipart body; HTTP is skipped only to save time). The data
directory is on /dev/shm when it exists: this disk takes ~9 ms per fsync and
the store fsyncs every file, which would make loading 100,000 files take a
quarter of an hour; QIDO only reads the SQLite index, so it does not care.
The server is then the real ``twistd -n dicomweb`` on that directory, asked
over loopback HTTP with a keep-alive session.

Layout: 2 series of 50 instances per study; study ``n`` has PatientName
``PAT{n:05d}^BENCH`` and StudyDate 2015-01-01 + 3n days.
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import requests  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402

from tests.server import ServerProcess  # noqa: E402

ROOT = "1.2.826.0.1.3680043.10.1"
PER_SERIES, SERIES_PER_STUDY = 50, 2
QUERY_A = "/studies?PatientName=PAT0000*&StudyDate=20150101-20191231"
QUERY_B = "/instances?limit=1000"
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
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros((64, 64), np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def instance_bytes(base: bytes, n: int) -> bytes:
    """Instance ``n`` (0-based): the template with its UIDs, name and date patched."""
    study = n // (PER_SERIES * SERIES_PER_STUDY)
    series = n // PER_SERIES
    day = (date(2015, 1, 1) + timedelta(days=3 * study)).strftime("%Y%m%d")
    values = {P_STUDY: f"{ROOT}.1.{1000000 + study}", P_SERIES: f"{ROOT}.2.{1000000000 + series}",
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
    for _ in range(5):  # warm up caches and the connection
        response = session.get(url + path, timeout=60)
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


def figures(data_dir: str, log: str, stored: int, runs: int) -> dict[str, tuple[float, float, int]]:
    with ServerProcess(data_dir, log) as server:
        out = {"a": measure(server.url, QUERY_A, runs), "b": measure(server.url, QUERY_B, runs)}
    for key, (p50, p90, count) in out.items():
        print(f"  {stored:>7,} instances  ({key}) p50 {p50:7.2f} ms  p90 {p90:7.2f} ms  ({count} results)")
    return out


def main() -> None:
    if sys.argv[1:2] == ["--load"]:
        _load_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=1_200)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="qido-bench-", dir=args.dir)
    data_dir, log = os.path.join(work, "data"), os.path.join(work, "server.log")
    try:
        print(f"loading {args.small:,} instances into {data_dir}")
        print(f"  {run_load(data_dir, 0, args.small):.1f} s")
        small = figures(data_dir, log, args.small, args.runs)
        print(f"loading up to {args.large:,} instances")
        print(f"  {run_load(data_dir, args.small, args.large):.1f} s")
        large = figures(data_dir, log, args.large, args.runs)
        for key, label in (("a", "filtered study search"), ("b", "/instances?limit=1000")):
            ratio = large[key][0] / small[key][0]
            print(f"({key}) {label}: p50 {small[key][0]:.2f} -> {large[key][0]:.2f} ms, x{ratio:.2f}"
                  f" (target < 2x{', and < 20 ms' if key == 'a' else ''})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
