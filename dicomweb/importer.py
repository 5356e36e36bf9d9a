"""``dicomweb-import``: bulk import of folders of DICOM files.

Online (default): walks folders (any file names), skips non-DICOM files with
a count, asks the server which instances it already has (one QIDO request per
batch) and sends the rest with STOW-RS in batches, with bounded concurrency
and retries of transient failures, showing progress (files, MB, rate, ETA).
Ends with a summary: stored / already present (and why) / failed (with
reasons and a few file names), and the warnings DICOM reading raised, counted
by kind instead of printed per file.

Offline (``--offline --data-dir DIR``): indexes the files into an embedded
store in place, without copying them and without a server (for archives
already on the server's disk).

This is a client program: plain threads and ``requests``, no reactor.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

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


#: File names shown per failure reason or warning kind in the summary.
EXAMPLES = 3


class Tally:
    """Counts by kind, with the first few file names of each kind."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.roots: list[str] = []
        self._once: set[tuple[str, str]] = set()

    def short(self, path: str) -> str:
        """``path`` relative to the folder it was found under (shorter to read)."""
        for root in self.roots:
            if path.startswith(root + os.sep):
                return path[len(root) + 1:]
        return path

    def add(self, kind: str, path: str | None = None, count: int = 1) -> None:
        self.counts[kind] += count
        names = self.examples.setdefault(kind, [])
        shown = None if path is None else " = ".join(self.short(p) for p in path.split(" = "))
        if shown is not None and len(names) < EXAMPLES and shown not in names:
            names.append(shown)

    def add_once(self, kind: str, path: str) -> None:
        """Count ``path`` under ``kind`` unless it is counted there already
        (a file is read twice offline: once to list it, once to index it)."""
        if (kind, path) not in self._once:
            self._once.add((kind, path))
            self.add(kind, path)

    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self, label: str) -> list[str]:
        out = []
        for kind, count in self.counts.most_common():
            names = self.examples.get(kind) or []
            more = ", ..." if len(names) == EXAMPLES and count > EXAMPLES else ""
            where = f" ({', '.join(names)}{more})" if names else ""
            out.append(f"  {label}: {count} x {kind}{where}")
        return out

    def __bool__(self) -> bool:
        return bool(self.counts)


@dataclass
class Summary:
    files: int = 0
    not_dicom: int = 0
    stored: int = 0
    #: Files whose SOP Instance UID another file of this import already has.
    duplicates: Tally = field(default_factory=Tally)
    #: Instances the store already holds (with the same bytes, offline).
    on_server: int = 0
    failed: Tally = field(default_factory=Tally)
    warned: Tally = field(default_factory=Tally)
    #: Instances (candidates) sent or checked so far, and their bytes.
    done: int = 0
    bytes_done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set_roots(self, roots: Sequence[str]) -> None:
        folders = [os.path.abspath(r if os.path.isdir(r) else os.path.dirname(r) or ".") for r in roots]
        for tally in (self.duplicates, self.failed, self.warned):
            tally.roots = sorted(folders, key=len, reverse=True)

    @property
    def present(self) -> int:
        return self.duplicates.total() + self.on_server

    def text(self) -> str:
        lines = [f"{self.stored} stored, {self.present} already present, {self.failed.total()} failed, "
                 f"{self.not_dicom} not DICOM (skipped), {self.files} files seen"]
        if self.on_server:
            lines.append(f"  already present: {self.on_server} x already in the store")
        lines += self.duplicates.lines("already present")
        lines += self.failed.lines("failed")
        lines += self.warned.lines("warning")
        return "\n".join(lines)


_NUMBERS = re.compile(r"0x[0-9A-Fa-f]+|\d+")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def warning_kind(message: str) -> str:
    """One warning text as its kind: values (numbers, quoted text) replaced so
    that the same warning about different files counts once."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    first = first.split(" Please see ")[0].split(" See ")[0]  # the standard's URL adds nothing here
    text = _QUOTED.sub("'...'", _NUMBERS.sub("N", first))
    return text[:120] or "warning"


class _LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def collected_warnings(summary: Summary, path: str) -> Iterator[None]:
    """Count the warnings pydicom raises (``warnings`` and its logger) while
    reading ``path`` in the summary, instead of printing them per file.
    Used from one thread only (``warnings.catch_warnings`` is process-wide)."""
    logger = logging.getLogger("pydicom")
    handler = _LogCollector()
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    # Counted once per file and kind: one damaged file can warn many times.
    for message in [str(w.message) for w in caught] + handler.messages:
        summary.warned.add_once(warning_kind(message), path)


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


def identify(path: str) -> Candidate | str:
    """UIDs of a Part 10 file (header only), or why it cannot be imported."""
    import pydicom

    keywords = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=keywords)
    except Exception as exc:  # pydicom raises many types on damaged files
        return f"unreadable DICOM header ({type(exc).__name__})"
    missing = [k for k in keywords if not str(ds.get(k, "") or "").strip()]
    if missing:
        return f"no {missing[0]}"
    return Candidate(path, os.path.getsize(path), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                     str(ds.SOPInstanceUID))


class Progress:
    """Progress on stderr: instances done of the total found, MB, rate, ETA.

    On a terminal, one bar redrawn in place (twice a second at most);
    otherwise (a log file, CI) a plain line every ``line_every`` seconds."""

    def __init__(self, total_files: int, total_bytes: int, enabled: bool, stream: IO[str] | None = None,
                 line_every: float = 10.0) -> None:
        self.total_files, self.total_bytes = total_files, total_bytes
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = 0.5 if self.tty else line_every
        self.start = time.monotonic()
        self._last = 0.0

    def status(self, summary: Summary, now: float) -> str:
        elapsed = max(now - self.start, 1e-6)
        rate = summary.bytes_done / elapsed
        left = max(0, self.total_bytes - summary.bytes_done)
        eta = f"ETA {left / rate:.0f} s" if rate > 0 and left else ("done" if not left else "ETA -")
        return (f"{summary.done}/{self.total_files} instances, {summary.bytes_done / 1e6:.1f}/"
                f"{self.total_bytes / 1e6:.1f} MB, {rate / 1e6:.1f} MB/s, {eta}")

    def update(self, summary: Summary, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.every):
            return
        self._last = now
        with summary.lock:
            text = self.status(summary, now)
            share = summary.done / self.total_files if self.total_files else 1.0
        if self.tty:
            bar = "#" * int(share * 30)
            self.stream.write(f"\r[{bar:<30}] {text}   ")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self, summary: Summary) -> None:
        self.update(summary, force=True)
        if self.enabled and self.tty:
            self.stream.write("\n")


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
        summary = self.summary
        with summary.lock:
            summary.bytes_done += sum(c.size for c in batch)
            summary.done += len(batch)
            if response is None or response.status_code not in (200, 202, 409):
                reason = "server unreachable" if response is None else f"HTTP {response.status_code}"
                for candidate in batch:
                    summary.failed.add(reason, candidate.path)
                return
            body = response.json()
            paths = {c.sop: c.path for c in batch}
            for item in body.get("00081198", {}).get("Value", []):
                summary.failed.add(failure_reason(item), paths.get(_value(item, "00081155")))
            summary.stored += len(body.get("00081199", {}).get("Value", []))

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


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def failure_reason(item: dict[str, Any]) -> str:
    """A Failed SOP Sequence item as a reason: the failure's meaning (PS3.18
    Table I.2-1) and the server's own text when it gives one."""
    code = _value(item, "00081197")
    meaning = FAILURE_TEXT.get(code, f"failure {code:04X}" if isinstance(code, int) else "failure")
    text = _value(item, "00091001")
    return f"{meaning}: {text}" if isinstance(text, str) and text else meaning


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
    seen: dict[str, str] = {}
    summary.set_roots(roots)
    for path in walk([os.path.abspath(r) for r in roots]):
        summary.files += 1
        if not is_dicom_file(path):
            summary.not_dicom += 1
            continue
        with collected_warnings(summary, path):
            candidate = identify(path)
        if isinstance(candidate, str):
            summary.failed.add(candidate, path)
            continue
        first = seen.get(candidate.sop)
        if first is not None:
            summary.duplicates.add("same SOP Instance UID as another file of this import", f"{path} = {first}")
            continue
        seen[candidate.sop] = path
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
            summary.on_server += len(batch) - len(todo)
            summary.done += len(batch) - len(todo)
            summary.bytes_done += sum(c.size for c in batch if c.sop in have)
        if todo and not args.dry_run:
            uploader.send(todo)
        elif todo:
            with summary.lock:
                summary.stored += len(todo)  # would be stored
                summary.done += len(todo)
                summary.bytes_done += sum(c.size for c in todo)
        progress.update(summary)

    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for future in [pool.submit(one, batch) for batch in _batches(candidates, args.batch)]:
            future.result()
    progress.finish(summary)


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
                with open(candidate.path, "rb") as fp, collected_warnings(summary, candidate.path):
                    infos.append(analyze(fp))
                paths.append(candidate.path)
            except InvalidInstance as exc:
                summary.failed.add(exc.reason, candidate.path)
        outcomes = index.link(infos, paths) if infos and not args.dry_run else []
        for path, outcome in zip(paths, outcomes, strict=False):
            if outcome.outcome == "unchanged":
                summary.on_server += 1
            elif outcome.outcome == "failed":
                summary.failed.add(outcome.reason, path)
            else:
                summary.stored += 1
        if args.dry_run:
            summary.stored += len(infos)
        summary.done += len(batch)
        summary.bytes_done += sum(c.size for c in batch)
        progress.update(summary)
    progress.finish(summary)


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
