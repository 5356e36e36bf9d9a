"""``dicomweb-import``: bulk import of folders of DICOM files.

Online (default): walks folders (any file names), skips non-DICOM files with
a count, asks the server which instances it already has (one QIDO request per
batch) and sends the rest with STOW-RS in batches, with bounded concurrency
and retries of transient failures, showing progress (files, MB, rate, ETA).
Ends with a summary: stored / already present / failed (with reasons).

Offline (``--offline --data-dir DIR``): indexes the files into an embedded
store in place, without copying them and without a server (for archives
already on the server's disk).

This is a client program: plain threads and ``requests``, no reactor.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store.sqlindex import EmbeddedIndex

FAILURE_TEXT = {
    0x0110: "processing failure",
    0x0122: "SOP class not supported",
    0xA700: "out of resources",
    0xA900: "data set does not match",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
}
TRANSIENT = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Candidate:
    path: str
    size: int
    study: str
    series: str
    sop: str


@dataclass
class Summary:
    files: int = 0
    not_dicom: int = 0
    stored: int = 0
    present: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    bytes_done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def text(self) -> str:
        lines = [f"{self.stored} stored, {self.present} already present, {sum(self.failed.values())} failed, "
                 f"{self.not_dicom} not DICOM (skipped), {self.files} files seen"]
        lines += [f"  failed: {count} x {reason}" for reason, count in self.failed.most_common()]
        return "\n".join(lines)


def is_dicom_file(path: str) -> bool:
    """Part 10 files have "DICM" at byte 128."""
    try:
        with open(path, "rb") as fp:
            head = fp.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def walk(roots: Sequence[str]) -> Iterator[str]:
    for root in roots:
        if os.path.isfile(root):
            yield root
            continue
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                yield os.path.join(folder, name)


def identify(path: str) -> Candidate | None:
    """UIDs of a Part 10 file (header only), or None if it is not usable."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        return Candidate(path, os.path.getsize(path), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                         str(ds.SOPInstanceUID))
    except Exception:  # unreadable files are reported as failures by the server
        return None


class Progress:
    """One status line on stderr: files, MB, rate, ETA."""

    def __init__(self, total_files: int, total_bytes: int, enabled: bool) -> None:
        self.total_files, self.total_bytes = total_files, total_bytes
        self.enabled = enabled
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, summary: Summary, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.5):
            return
        self._last = now
        done = summary.stored + summary.present + sum(summary.failed.values())
        elapsed = max(now - self.start, 1e-6)
        rate = summary.bytes_done / elapsed
        eta = (self.total_bytes - summary.bytes_done) / rate if rate > 0 else 0
        sys.stderr.write(f"\r{done}/{self.total_files} files, {summary.bytes_done / 1e6:.1f}/"
                         f"{self.total_bytes / 1e6:.1f} MB, {rate / 1e6:.1f} MB/s, ETA {eta:.0f} s   ")
        sys.stderr.flush()


class Uploader:
    def __init__(self, url: str, session: Any, summary: Summary, retries: int = 4) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.summary = summary
        self.retries = retries

    def present(self, batch: Sequence[Candidate]) -> set[str]:
        """SOP Instance UIDs of the batch that the server already has."""
        uids = ",".join(c.sop for c in batch)
        response = self._request("GET", f"{self.url}/instances", params={
            "SOPInstanceUID": uids, "includefield": "00080018", "limit": str(len(batch))},
            headers={"Accept": "application/dicom+json"})
        if response is None or response.status_code not in (200, 204):
            return set()  # cannot tell: send them (storing again is idempotent)
        items = response.json() if response.content else []
        return {item["00080018"]["Value"][0] for item in items if "00080018" in item}

    def send(self, batch: Sequence[Candidate]) -> None:
        boundary = uuid.uuid4().hex
        response = self._request("POST", f"{self.url}/studies", data=_body(batch, boundary), headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json"}, rebuild=lambda: _body(batch, boundary))
        self._record(batch, response)

    def _record(self, batch: Sequence[Candidate], response: Any) -> None:
        with self.summary.lock:
            self.summary.bytes_done += sum(c.size for c in batch)
            if response is None:
                self.summary.failed["server unreachable"] += len(batch)
                return
            if response.status_code not in (200, 202, 409):
                self.summary.failed[f"HTTP {response.status_code}"] += len(batch)
                return
            body = response.json()
            for item in body.get("00081198", {}).get("Value", []):
                code = item.get("00081197", {}).get("Value", [0])[0]
                self.summary.failed[FAILURE_TEXT.get(code, f"failure {code:04X}")] += 1
            self.summary.stored += len(body.get("00081199", {}).get("Value", []))

    def _request(self, method: str, url: str, rebuild: Any = None, **kwargs: Any) -> Any:
        import requests

        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(method, url, timeout=600, **kwargs)
            except requests.RequestException:
                response = None
            if response is not None and response.status_code not in TRANSIENT:
                return response
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
                if rebuild is not None:
                    kwargs["data"] = rebuild()
        return response


def _body(batch: Iterable[Candidate], boundary: str) -> Iterator[bytes]:
    """The multipart body, read from the files as it is sent (not held in memory)."""
    for candidate in batch:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with open(candidate.path, "rb") as fp:
            while chunk := fp.read(1 << 20):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def _batches(items: Sequence[Candidate], size: int) -> Iterator[Sequence[Candidate]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def scan(roots: Sequence[str], summary: Summary) -> list[Candidate]:
    """The DICOM files under ``roots``, one per SOP Instance UID (a second file
    with the same instance counts as already present)."""
    candidates = []
    seen: set[str] = set()
    for path in walk(roots):
        summary.files += 1
        if not is_dicom_file(path):
            summary.not_dicom += 1
            continue
        candidate = identify(path)
        if candidate is None:
            summary.failed["unreadable DICOM header"] += 1
            continue
        if candidate.sop in seen:
            summary.present += 1
            continue
        seen.add(candidate.sop)
        candidates.append(candidate)
    return candidates


def run_online(args: argparse.Namespace, candidates: list[Candidate], summary: Summary) -> None:
    import requests

    session = requests.Session()
    if args.user:
        session.auth = (args.user, args.password or os.environ.get("DICOMWEB_PASSWORD", ""))
    if args.token or os.environ.get("DICOMWEB_TOKEN"):
        session.headers["Authorization"] = f"Bearer {args.token or os.environ['DICOMWEB_TOKEN']}"
    uploader = Uploader(args.url, session, summary)
    progress = Progress(len(candidates), sum(c.size for c in candidates), not args.quiet)

    def one(batch: Sequence[Candidate]) -> None:
        have = uploader.present(batch)
        todo = [c for c in batch if c.sop not in have]
        with summary.lock:
            summary.present += len(batch) - len(todo)
            summary.bytes_done += sum(c.size for c in batch if c.sop in have)
        if todo and not args.dry_run:
            uploader.send(todo)
        elif todo:
            with summary.lock:
                summary.stored += len(todo)  # would be stored
                summary.bytes_done += sum(c.size for c in todo)
        progress.update(summary)

    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for future in [pool.submit(one, batch) for batch in _batches(candidates, args.batch)]:
            future.result()
    progress.update(summary, force=True)
    if not args.quiet:
        sys.stderr.write("\n")


def run_offline(args: argparse.Namespace, candidates: list[Candidate], summary: Summary) -> None:
    from .store.sqlindex import EmbeddedIndex

    index = EmbeddedIndex(args.data_dir)
    index.open()
    try:
        _link_batches(index, args, candidates, summary)
    finally:
        index.close()


def _link_batches(index: EmbeddedIndex, args: argparse.Namespace, candidates: list[Candidate],
                  summary: Summary) -> None:
    from .dicom.analyze import InvalidInstance, analyze

    progress = Progress(len(candidates), sum(c.size for c in candidates), not args.quiet)
    for batch in _batches(candidates, args.batch):
        infos, paths = [], []
        for candidate in batch:
            try:
                with open(candidate.path, "rb") as fp:
                    infos.append(analyze(fp))
                paths.append(candidate.path)
            except InvalidInstance as exc:
                summary.failed[exc.reason] += 1
        outcomes = index.link(infos, paths) if infos and not args.dry_run else []
        for outcome in outcomes:
            if outcome.outcome == "unchanged":
                summary.present += 1
            elif outcome.outcome == "failed":
                summary.failed[outcome.reason] += 1
            else:
                summary.stored += 1
        if args.dry_run:
            summary.stored += len(infos)
        summary.bytes_done += sum(c.size for c in batch)
        progress.update(summary)
    progress.update(summary, force=True)
    if not args.quiet:
        sys.stderr.write("\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dicomweb-import", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="files or folders to import")
    p.add_argument("--url", help="server base URL, e.g. http://localhost:5985")
    p.add_argument("--offline", action="store_true", help="index files in place into --data-dir (no server)")
    p.add_argument("--data-dir", help="embedded store directory for --offline")
    p.add_argument("--batch", type=int, default=25, help="instances per STOW request [25]")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight [4]")
    p.add_argument("--dry-run", action="store_true", help="report what would be stored; store nothing")
    p.add_argument("--user", help="HTTP basic user (password from --password or DICOMWEB_PASSWORD)")
    p.add_argument("--password")
    p.add_argument("--token", help="OIDC bearer token (or DICOMWEB_TOKEN)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.offline == bool(args.url) or (args.offline and not args.data_dir):
        parser().error("give either --url URL, or --offline --data-dir DIR")
    if args.batch < 1 or args.concurrency < 1:
        parser().error("--batch and --concurrency must be at least 1")
    summary = Summary()
    candidates = scan(args.paths, summary)
    (run_offline if args.offline else run_online)(args, candidates, summary)
    print(("dry run: " if args.dry_run else "") + summary.text())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
