"""``--workers``: throughput with 1 and 2 worker processes, one command:

    python bench/workers.py [--quick] [--workers 1,2] [--no-report]

For each worker count, a fresh server (embedded store, ``twistd -n dicomweb
--workers N``) is loaded with one generated study (512x512 16-bit CT), then:

1. frames: ``wrk`` (C, one thread: little CPU) fetches native frames of the
   study's instances in turn, 16 connections, for the run's duration
   (req/s); without ``wrk`` a lean load generator (raw sockets, one process)
   does it;
2. STOW: 4 client threads each send new instances in requests of 10, the
   bodies built before the clock starts (instances/s).

The server's CPU time (user + system, from /proc of the supervisor and every
worker) over each run gives its CPU per request; the projection for more
cores is that figure's ceiling, ``cores / CPU per request``, which holds while
nothing shared saturates first (for STOW: the one index writer at a time and
the fsyncs; for frames: nothing shared but the page cache).

The table is printed and appended to ``bench/REPORT.md``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import append_report, describe_commit, machine  # noqa: E402

from tests import dicomgen  # noqa: E402
from tests.httpclient import json_of, multipart_body, referenced  # noqa: E402
from tests.server import ServerProcess  # noqa: E402

FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
CLK_TCK = os.sysconf("SC_CLK_TCK")


def server_pids(parent: int) -> list[int]:
    """The supervisor (or single server) and its worker processes."""
    pids = [parent]
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(name))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


@dataclass
class Run:
    rate: float  # requests/s or instances/s
    count: int
    cpu: float  # server CPU seconds
    seconds: float

    @property
    def cpu_per_item_ms(self) -> float:
        return 1000 * self.cpu / max(self.count, 1)


def load_study(url: str, instances: int) -> list[str]:
    """STOW a study; the frame paths of its instances."""
    study, series = generate_uid(), generate_uid()
    parts = list(dicomgen.ct_series(instances, study_uid=study, series_uid=series, size=512))
    body, boundary = multipart_body(parts)
    response = requests.post(url + "/studies", data=body, timeout=300, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    response.raise_for_status()
    return [f"/studies/{study}/series/{series}/instances/{sop}/frames/1" for sop in referenced(json_of(response))]


def frames_wrk(url: str, paths: list[str], seconds: float, connections: int, pids: list[int]) -> Run:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    with script:
        script.write("local paths = {" + ",".join(f'"{p}"' for p in paths) + "}\nlocal i = 0\n"
                     "request = function()\n  i = i % #paths + 1\n"
                     f"  return wrk.format('GET', paths[i], {{['Accept'] = '{FRAME_ACCEPT}'}})\nend\n")
    try:
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "-s", script.name, url],
                             capture_output=True, text=True, check=True).stdout
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(pids) - cpu0
    finally:
        os.unlink(script.name)
    match = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not match or errors:
        raise RuntimeError("wrk: " + out)
    count = int(match.group(1))
    return Run(count / elapsed, count, cpu, elapsed)


def frames_python(url: str, paths: list[str], seconds: float, connections: int, pids: list[int]) -> Run:
    """Without wrk: keep-alive GETs on raw sockets, one thread per connection
    (the GIL is released while waiting, the parsing is a few lines)."""
    host, port = url.split("//")[1].split(":")
    count = [0] * connections
    stop = time.monotonic() + seconds

    def client(n: int) -> None:
        with socket.create_connection((host, int(port))) as sock:
            reader = sock.makefile("rb")
            i = n
            while time.monotonic() < stop:
                path = paths[i % len(paths)]
                i += 1
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {FRAME_ACCEPT}\r\n\r\n".encode())
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                reader.read(length)
                count[n] += 1

    cpu0, t0 = cpu_seconds(pids), time.monotonic()
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(client, range(connections)))
    elapsed = time.monotonic() - t0
    return Run(sum(count) / elapsed, sum(count), cpu_seconds(pids) - cpu0, elapsed)


def stow_run(url: str, requests_count: int, batch: int, clients: int, pids: list[int]) -> Run:
    bodies = []
    for _ in range(requests_count):
        study = generate_uid()
        parts = list(dicomgen.ct_series(batch, study_uid=study, size=512))
        bodies.append(multipart_body(parts))
    done = [0]
    lock = threading.Lock()

    def send(item: tuple[bytes, str]) -> None:
        body, boundary = item
        response = requests.post(url + "/studies", data=body, timeout=300, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json"})
        response.raise_for_status()
        with lock:
            done[0] += len(referenced(json_of(response)))

    cpu0, t0 = cpu_seconds(pids), time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, bodies))
    elapsed = time.monotonic() - t0
    return Run(done[0] / elapsed, done[0], cpu_seconds(pids) - cpu0, elapsed)


def measure(workers: int, quick: bool, tmp: Path) -> tuple[Run, Run]:
    base = tmp / f"w{workers}"
    server = ServerProcess(str(base / "data"), str(base / "server.log"), "--workers", str(workers))
    base.mkdir(parents=True)
    with server:
        assert server.proc is not None
        deadline = time.monotonic() + 60
        while server.log().count("MeteredSite starting on") < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = server_pids(server.proc.pid)
        paths = load_study(server.url, 20 if quick else 60)
        seconds = 5 if quick else 15
        frames = frames_wrk if shutil.which("wrk") else frames_python
        frames(server.url, paths, 1, 16, pids)  # warm-up: page cache, connections, code paths
        frame_run = frames(server.url, paths, seconds, 16, pids)
        stow = stow_run(server.url, 12 if quick else 40, 10, 4, pids)
    return frame_run, stow


def table(results: dict[int, tuple[Run, Run]]) -> tuple[str, list[str]]:
    counts = sorted(results)
    head = ["measure", *[f"{n} worker{'s' if n > 1 else ''}" for n in counts]]
    if len(counts) > 1:
        head.append(f"{counts[-1]}/{counts[0]}")
    rows: list[list[str]] = []

    def row(name: str, values: list[float], fmt: str) -> None:
        cells = [fmt.format(v) for v in values]
        if len(values) > 1:
            cells.append(f"{values[-1] / values[0]:.2f}" if values[0] else "-")
        rows.append([name, *cells])

    row("native frames 512² (req/s)", [results[n][0].rate for n in counts], "{:.0f}")
    row("server CPU per frame request (ms)", [results[n][0].cpu_per_item_ms for n in counts], "{:.2f}")
    row("STOW 512² instances, 4 clients x 10 per request (inst/s)", [results[n][1].rate for n in counts], "{:.1f}")
    row("server CPU per stored instance (ms)", [results[n][1].cpu_per_item_ms for n in counts], "{:.2f}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    frame_cpu = min(results[n][0].cpu_per_item_ms for n in counts) / 1000
    stow_cpu = min(results[n][1].cpu_per_item_ms for n in counts) / 1000
    notes = [f"projection, CPU-bound ceiling = cores / CPU per item: frames {1 / frame_cpu:.0f} req/s per core "
             f"({8 / frame_cpu:.0f} on 8 cores, {16 / frame_cpu:.0f} on 16); STOW {1 / stow_cpu:.0f} inst/s per "
             f"core, until the one index writer at a time and the fsyncs (shared by all workers) bind first"]
    return "\n".join(lines), notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 s runs, smaller study and STOW load")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--no-report", action="store_true", help="print only, do not append to bench/REPORT.md")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dicomweb-bench-workers-") as tmp:
        results = {n: measure(n, args.quick, Path(tmp)) for n in counts}
    text, notes = table(results)
    load = "wrk 1 thread, 16 connections" if shutil.which("wrk") else "Python raw-socket client, 16 connections"
    facts = [f"machine: {machine()}; shared with other work while measured (load average "
             f"{os.getloadavg()[0]:.1f} at the end)",
             f"dicomweb: {describe_commit(REPO)}, embedded store",
             f"frames: {load}, {'5' if args.quick else '15'} s per run after a 1 s warm-up; STOW: 4 client "
             f"threads, {'12' if args.quick else '40'} requests of 10 new instances; server CPU = user+system "
             f"of the supervisor and every worker (/proc); run took {time.monotonic() - started:.0f} s",
             "the load generator and the clients run on the same cores as the server"]
    stamp = time.strftime("%Y-%m-%d %H:%M %Z")
    section = "\n".join([f"## {stamp} — workers{' (quick)' if args.quick else ''}", "",
                         *[f"- {f}" for f in facts], "", text, "", "Notes:", "",
                         *[f"- {n}" for n in notes], ""]) + "\n"
    print(section)
    if not args.no_report:
        append_report(section)


if __name__ == "__main__":
    main()
