"""DIMSE benchmark: our server against Orthanc, side by side (issue 14).

One command, from the repository root::

    python bench/dimse.py             # the full corpus (1,200 instances; ≈ 5 min on 2 cores)
    python bench/dimse.py --quick     # 120 instances (< 1 min)
    python bench/dimse.py --stores embedded,couch
    python bench/dimse.py --quick --client-nodelay   # dcmtk's tools with Nagle off
    python bench/dimse.py --big       # only: RSS growth while one 1 GB instance arrives

What is measured (dcmtk's tools as clients, ``storescp --ignore`` as the
C-MOVE destination, everything on 127.0.0.1):

- C-STORE: ``storescu`` sending the main corpus over one association, then
  (other UIDs) over 4 parallel associations: instances/s;
- C-FIND: ``findscu`` at STUDY level with a name wildcard and a date range
  (the QIDO benchmark's search): median latency, association included;
- C-MOVE: a 60-instance study (40 with --quick) into the sink: instances/s.
- ``--big``: each server's RSS growth (sampled every 50 ms) while ``storescu``
  sends it one 1 GiB instance (64 frames of 4096 x 2048 x 16 bits), and the
  time it took.

Orthanc 1.10 (Debian) runs with its defaults and a private configuration
naming the benchmark's AEs; our server with ``--dimse-port`` and the sink as
``--dimse-peer``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import servers
from corpus import FULL, QIDO_DATES, QIDO_NAME, QUICK, Corpus, ensure_corpus

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DCMTK = "/usr/bin"  # pynetdicom installs Python tools with the same names
SCU_AE, SINK_AE = "BENCHSCU", "SINK"
#: Environment of dcmtk's tools (clients and sink); --client-nodelay adds
#: TCP_NODELAY=1, which makes Debian's dcmtk turn Nagle's algorithm off.
TOOL_ENV: dict[str, str] = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
_DIMSE_RE = re.compile(r"DIMSE listener \(AE [^)]*\) starting on (\d+)")


def say(msg: str) -> None:
    print(msg, flush=True)


def tool(name: str) -> str:
    path = f"{DCMTK}/{name}"
    if not Path(path).exists():
        raise SystemExit("dcmtk is missing: apt-get install dcmtk (scripts/install-system-deps)")
    return path


class Target:
    def __init__(self, name: str, ae: str, port: int, server: servers.Server) -> None:
        self.name, self.ae, self.port, self.server = name, ae, port, server


def start_orthanc(tmp: Path, sink_port: int) -> Target:
    import json

    import requests

    tmp.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = servers.free_port(), servers.free_port()
    config = servers.orthanc_config(tmp, http_port, dicom_port)
    config["Plugins"] = []
    config["DicomModalities"] = {"scu": [SCU_AE, "127.0.0.1", 1], "sink": [SINK_AE, "127.0.0.1", sink_port]}
    path = tmp / "orthanc.json"
    path.write_text(json.dumps(config))
    log = tmp / "orthanc.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["Orthanc", str(path)], cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    servers.wait_http(base + "/system", proc, log)
    version = requests.get(base + "/system", timeout=5).json().get("Version", "?")
    return Target(f"Orthanc {version}", str(config["DicomAet"]), dicom_port,
                  servers.Server("Orthanc", base, proc, log))


#: ``--workers`` for our server (1: one process).
WORKERS = 1


def start_ours(tmp: Path, store: str, sink_port: int, pouch: servers.Server | None) -> Target:
    extra = ["--dimse-port", "0", "--dimse-peer", f"{SINK_AE}=127.0.0.1:{sink_port}"]
    if WORKERS > 1:
        extra += ["--workers", str(WORKERS)]
    if store == "couch":
        assert pouch is not None
        extra += ["--couchdb", pouch.url]
    server = servers.start_ours(REPO, tmp, store, extra)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = _DIMSE_RE.search(servers.tail(server.log, 100_000))
        if match:
            name = f"ours [{store}]" + (f", {WORKERS} workers" if WORKERS > 1 else "")
            return Target(name, "DICOMWEB", int(match.group(1)), server)
        time.sleep(0.05)
    raise RuntimeError("the DIMSE listener did not start")


def start_sink(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = servers.free_port()
    proc = subprocess.Popen([tool("storescp"), "-aet", SINK_AE, "--ignore", str(port)], cwd=tmp, env=TOOL_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return proc, port


def variant_files(corpus: Corpus, variant: int, folder: Path) -> list[str]:
    """The main corpus with the UIDs of ``variant`` (0: the files as they are)."""
    main = corpus.group("main")
    if variant == 0:
        return [str(corpus.root / i.path) for i in main]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, inst in enumerate(main):
        path = folder / f"{n}.dcm"
        path.write_bytes(corpus.read(inst, variant))
        out.append(str(path))
    return out


def c_store(target: Target, files: list[str], associations: int) -> float:
    """instances/s sending ``files`` over ``associations`` parallel storescu."""
    groups = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [subprocess.Popen([tool("storescu"), "-aet", SCU_AE, "-aec", target.ae, "127.0.0.1",
                               str(target.port), *group], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=TOOL_ENV)
             for group in groups]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"storescu to {target.name} failed: {err.decode()[-500:]}")
    return len(files) / (time.perf_counter() - start)


def c_find(target: Target, samples: int) -> tuple[float, int]:
    """(median seconds, answers) of the study search, association included."""
    args = [tool("findscu"), "-S", "-aet", SCU_AE, "-aec", target.ae, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"PatientName={QIDO_NAME}", "-k", f"StudyDate={QIDO_DATES[0]}-{QIDO_DATES[1]}",
            "-k", "StudyInstanceUID", "-k", "PatientID", "127.0.0.1", str(target.port)]
    times, answers = [], 0
    for _ in range(samples + 1):
        start = time.perf_counter()
        out = subprocess.run(args, capture_output=True, text=True, check=True, env=TOOL_ENV)
        times.append(time.perf_counter() - start)
        answers = out.stderr.count("Find Response:") + out.stdout.count("Find Response:")
    return statistics.median(times[1:]), answers


def c_move(target: Target, study: str, instances: int) -> float:
    start = time.perf_counter()
    subprocess.run([tool("movescu"), "-S", "-aet", SCU_AE, "-aec", target.ae, "-aem", SINK_AE,
                    "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                    "127.0.0.1", str(target.port)], capture_output=True, check=True, env=TOOL_ENV)
    return instances / (time.perf_counter() - start)


def measure(target: Target, corpus: Corpus, tmp: Path, samples: int) -> dict[str, float]:
    say(f"  {target.name}: C-STORE over 1 association ...")
    one = c_store(target, variant_files(corpus, 0, tmp), 1)
    say(f"  {target.name}: C-STORE over 4 associations ...")
    four = c_store(target, variant_files(corpus, 1, tmp / "v1"), 4)
    say(f"  {target.name}: C-FIND ...")
    find, answers = c_find(target, samples)
    say(f"  {target.name}: C-MOVE ...")
    studies = corpus.studies()
    moves = [c_move(target, study, len(items)) for study, items in list(studies.items())[:3]]
    return {"store1": one, "store4": four, "find": find, "answers": answers, "move": statistics.median(moves),
            "move_size": len(next(iter(studies.values())))}


def big_instance(folder: Path, mib: int = 1024) -> tuple[Path, str]:
    """A CT instance of ``mib`` MiB of native pixel data, written to disk
    frame by frame (never whole in this process's memory)."""
    import io

    from pydicom import dcmread
    from pydicom.uid import generate_uid

    sys.path.insert(0, str(REPO))
    from tests.dicomgen import ct_instance

    frame = 4096 * 2048 * 2
    frames = max(1, (mib << 20) // frame)
    ds = dcmread(io.BytesIO(ct_instance(generate_uid(), generate_uid(), 1, size=16)))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 2048, 4096, frames
    ds.PixelData = b""
    head = io.BytesIO()
    ds.save_as(head, enforce_file_format=True)
    data = head.getvalue()
    # The empty Pixel Data element closes the header: its 4-byte length
    # becomes the real one and the frames follow.
    assert data[-12:-8] == b"\xe0\x7f\x10\x00" and data[-4:] == b"\0\0\0\0", "Pixel Data must end the file"
    path = folder / "big.dcm"
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(data[:-4] + (frame * frames).to_bytes(4, "little"))
        chunk = bytes(range(256)) * (frame // 256)
        for _ in range(frames):
            out.write(chunk)
    return path, str(ds.SOPInstanceUID)


def stored(target: Target, sop: str) -> bool:
    import requests

    if target.name.startswith("Orthanc"):
        found = requests.post(target.server.url + "/tools/lookup", data=sop, timeout=30).json()
    else:
        found = requests.get(target.server.url + "/instances", params={"SOPInstanceUID": sop}, timeout=30).json()
    return bool(found)


def rss_growth(target: Target, path: Path) -> tuple[float, float]:
    """(MiB of RSS growth, seconds) while ``target`` receives ``path``."""
    sampler = servers.RSSSampler([target.server])
    try:
        with sampler.window() as (start, peak):
            began = time.perf_counter()
            c_store(target, [str(path)], 1)
            took = time.perf_counter() - began
        name = target.server.name
        return (peak[name] - start[name]) / (1 << 20), took
    finally:
        sampler.stop()


def big(stores: list[str], orthanc: bool, tmp: Path, sink_port: int) -> None:
    path, sop = big_instance(tmp / "big")
    size = path.stat().st_size / (1 << 20)
    rows = []
    for store in stores:
        pouch = servers.start_pouchdb(REPO, tmp / f"pouch-{store}") if store == "couch" else None
        ours = start_ours(tmp / f"ours-{store}", store, sink_port, pouch)
        try:
            rows.append((ours.name, *rss_growth(ours, path)))
            assert stored(ours, sop), f"{ours.name} did not store the instance"
        finally:
            ours.server.stop()
            if pouch is not None:
                pouch.stop()
    if orthanc:
        peer = start_orthanc(tmp / "orthanc", sink_port)
        try:
            rows.append((peer.name, *rss_growth(peer, path)))
            assert stored(peer, sop), f"{peer.name} did not store the instance"
        finally:
            peer.server.stop()
    say("")
    say(f"`python bench/dimse.py --big --stores {','.join(stores)}`: one {size:.0f} MiB instance over C-STORE")
    say("")
    say("| server | RSS growth (MiB) | time (s) |")
    say("|---|---|---|")
    for name, growth, took in rows:
        say(f"| {name} | {growth:.0f} | {took:.1f} |")


def table(results: dict[str, dict[str, float]], n: int) -> str:
    names = list(results)
    lines = [f"| operation | {' | '.join(names)} |", "|---" * (len(names) + 1) + "|"]

    def row(label: str, key: str, fmt: str) -> None:
        lines.append(f"| {label} | " + " | ".join(fmt.format(results[k][key]) for k in names) + " |")

    row(f"C-STORE {n} instances, 1 association (inst/s)", "store1", "{:.1f}")
    row(f"C-STORE {n} instances, 4 associations (inst/s)", "store4", "{:.1f}")
    for k in names:
        results[k]["find"] *= 1000
    row("C-FIND study, name wildcard + date range (ms, median)", "find", "{:.1f}")
    row("C-FIND answers", "answers", "{:.0f}")
    move_size = int(next(iter(results.values()))["move_size"])
    row(f"C-MOVE {move_size}-instance study (inst/s)", "move", "{:.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--stores", default="embedded")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--no-orthanc", action="store_true", help="our server only (while tuning it)")
    parser.add_argument("--big", action="store_true", help="only the 1 GiB C-STORE memory figure")
    parser.add_argument("--workers", type=int, default=1, help="our server's --workers (DIMSE in each)")
    parser.add_argument("--client-nodelay", action="store_true",
                        help="TCP_NODELAY=1 for dcmtk's tools: clients and sink with Nagle off")
    args = parser.parse_args()
    global WORKERS
    WORKERS = args.workers
    if args.client_nodelay:
        TOOL_ENV["TCP_NODELAY"] = "1"
    if shutil.which("Orthanc") is None:
        raise SystemExit("Orthanc is missing: apt-get install orthanc (DIMSE needs no plugin)")
    tmp = Path(tempfile.mkdtemp(prefix="dimse-bench-"))
    sink, sink_port = start_sink(tmp)
    if args.big:
        try:
            big(args.stores.split(","), not args.no_orthanc, tmp, sink_port)
        finally:
            sink.terminate()
            shutil.rmtree(tmp, ignore_errors=True)
        return
    corpus = ensure_corpus(QUICK if args.quick else FULL, say)
    n = len(corpus.group("main"))
    results: dict[str, dict[str, float]] = {}
    try:
        for store in args.stores.split(","):
            pouch = servers.start_pouchdb(REPO, tmp / f"pouch-{store}") if store == "couch" else None
            ours = start_ours(tmp / f"ours-{store}", store, sink_port, pouch)
            try:
                say(f"{ours.name}:")
                results[ours.name] = measure(ours, corpus, tmp / f"files-{store}", args.samples)
            finally:
                ours.server.stop()
                if pouch is not None:
                    pouch.stop()
        if not args.no_orthanc:
            orthanc = start_orthanc(tmp / "orthanc", sink_port)
            try:
                say(f"{orthanc.name}:")
                results[orthanc.name] = measure(orthanc, corpus, tmp / "files-orthanc", args.samples)
            finally:
                orthanc.server.stop()
    finally:
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    say("")
    flags = ((" --quick" if args.quick else "") + (" --client-nodelay" if args.client_nodelay else "")
             + (f" --workers {args.workers}" if args.workers > 1 else ""))
    say(f"`python bench/dimse.py{flags} --stores {args.stores}`")
    say("")
    say(table(results, n))


if __name__ == "__main__":
    sys.exit(main())
