"""STOW-RS figures for the foundation issue, one command:

    python bench/stow.py [--instances 1000] [--batch 20] [--big-mb 1000]

1. Throughput: ~1000 generated 512x512 16-bit CT instances sent in requests of
   20 (instances/s and MB/s), one client, the embedded store.
2. Memory: the server's peak RSS growth while it receives one ~1 GB request
   (sent from a file with a Content-Length, so the client does not hold it either).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import psutil
import requests
from pydicom.uid import generate_uid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import dicomgen
from tests.httpclient import stow
from tests.server import ServerProcess


class PeakRSS:
    """Samples a process's RSS every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def throughput(url: str, count: int, batch: int) -> str:
    study = generate_uid()
    parts = []
    for series in range(max(1, count // 200)):
        parts += list(dicomgen.ct_series(min(200, count - series * 200), study_uid=study, size=512))
    megabytes = sum(map(len, parts)) / 1e6
    start = time.perf_counter()
    for i in range(0, len(parts), batch):
        response = stow(url, parts[i:i + batch])
        response.raise_for_status()
    seconds = time.perf_counter() - start
    return (f"STOW {len(parts)} instances ({megabytes:.0f} MB) in requests of {batch}: "
            f"{len(parts) / seconds:.0f} instances/s, {megabytes / seconds:.0f} MB/s")


def _big_body(boundary: str, count: int) -> Iterator[bytes]:
    study, series = generate_uid(), generate_uid()
    for number in range(1, count + 1):
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield dicomgen.ct_instance(study, series, number, size=512)
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def big_request(url: str, pid: int, megabytes: int, folder: str) -> str:
    """One request with a Content-Length (sent from a file, like ``curl -T``)."""
    count = max(1, megabytes * 1_000_000 // 525_000)
    boundary = uuid.uuid4().hex
    path = os.path.join(folder, "big-body")
    with open(path, "wb") as out:
        for chunk in _big_body(boundary, count):
            out.write(chunk)
    with PeakRSS(pid) as rss, open(path, "rb") as body:
        start = time.perf_counter()
        response = requests.post(f"{url}/studies", data=body, timeout=3600, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        seconds = time.perf_counter() - start
    os.unlink(path)
    response.raise_for_status()
    growth = (rss.peak - rss.base) / 1e6
    return (f"one {count * 525_000 / 1e6:.0f} MB request ({count} instances) in {seconds:.1f} s: server RSS "
            f"{rss.base / 1e6:.0f} MB -> peak {rss.peak / 1e6:.0f} MB, growth {growth:.0f} MB (target < 100 MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--big-mb", type=int, default=1000, help="size of the single big request (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(os.path.join(tmp, "data"), os.path.join(tmp, "server.log"),
                               "--max-request-size", "4G")
        with server:
            print(throughput(server.url, args.instances, args.batch))
            if args.big_mb:
                assert server.proc is not None
                print(big_request(server.url, server.proc.pid, args.big_mb, tmp))


if __name__ == "__main__":
    main()
