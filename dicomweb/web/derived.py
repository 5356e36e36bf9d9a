"""A bounded on-disk cache of derived (transcoded) frames, local to this frontend.

A frame asked for in a syntax other than the stored one (HTJ2K for a
viewer's progressive loading, most often) is encoded once and kept under
``<data-dir>/derived/``; the next request for it reads the file.

- Key: SOP Instance UID, the stored version (the record's size and
  location: both stores give every stored version a new location, so a
  replaced instance never finds the frames of the one it replaced), target
  transfer syntax and frame number, hashed into a file name.
- Bounded: least recently used files go first once the total passes the
  limit (``--derived-cache-mb``; 0 turns the cache off). A hit refreshes the
  file's modification time, which is the LRU order.
- Safe with several processes on one data directory: a file is written to a
  temporary name and renamed into place (readers see a whole file or none);
  eviction tolerates files another process removed first; each process
  counts what it adds and rescans the directory when its count passes the
  limit.

Every method blocks (file I/O): call them from the thread pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..store import InstanceRecord

#: Eviction goes down to this fraction of the limit, so that it runs seldom.
LOW_WATER = 0.9
#: A temporary file this old was left by a writer that died (a write takes milliseconds).
STALE_TEMP_SECONDS = 600


@dataclass
class DerivedStats:
    hits: int = 0
    misses: int = 0
    stores: int = 0
    evicted: int = 0


class DerivedCache:
    """Derived frames under ``root``, at most ``limit_bytes`` of them."""

    def __init__(self, root: str, limit_bytes: int) -> None:
        self.root = root
        self.limit = limit_bytes
        self.stats = DerivedStats()
        self._lock = threading.Lock()
        self._total: int | None = None  # this process's estimate; None = not scanned yet

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    @staticmethod
    def key(record: InstanceRecord, target: str, frame_index: int) -> str:
        text = "\0".join((record.sop_uid, str(record.size), record.location, target, str(frame_index)))
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, key: str) -> str:
        return os.path.join(self.root, key[:2], key + ".frame")

    def get(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            with open(path, "rb") as fp:
                data = fp.read()
        except FileNotFoundError:
            with self._lock:
                self.stats.misses += 1
            return None
        with contextlib.suppress(FileNotFoundError):  # evicted by another process meanwhile
            os.utime(path)  # most recently used
        with self._lock:
            self.stats.hits += 1
        return data

    def has(self, key: str) -> bool:
        return os.path.exists(self.path(key))

    def put(self, key: str, data: bytes) -> None:
        if not self.enabled or len(data) > self.limit:
            return
        path = self.path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fp:
                fp.write(data)
            os.replace(temp, path)
        except BaseException:
            _unlink(temp)
            raise
        with self._lock:
            self.stats.stores += 1
            over = self._add(len(data))
        if over:
            self.evict()

    def through(self, key: str, make: Callable[[], bytes]) -> bytes:
        """The cached bytes of ``key``, or ``make()`` kept for next time."""
        if not self.enabled:
            return make()
        data = self.get(key)
        if data is None:
            data = make()
            self.put(key, data)
        return data

    def _add(self, size: int) -> bool:
        if self._total is None:
            self._total = self._scan_total()
        else:
            self._total += size
        return self._total > self.limit

    def _files(self) -> list[tuple[float, int, str]]:
        """(mtime, size, path) of every cached frame; removes temporary files
        a crashed writer left (older than :data:`STALE_TEMP_SECONDS`)."""
        out = []
        stale = time.time() - STALE_TEMP_SECONDS
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                if name.endswith(".frame"):
                    out.append((st.st_mtime, st.st_size, path))
                elif name.startswith(".tmp-") and st.st_mtime < stale:
                    _unlink(path)
        return out

    def _scan_total(self) -> int:
        return sum(size for _, size, _ in self._files())

    def total_bytes(self) -> int:
        return self._scan_total()

    def evict(self) -> None:
        """Remove least recently used frames until the total is under the low water mark."""
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        target = int(self.limit * LOW_WATER)
        removed = 0
        for _mtime, size, path in files:
            if total <= target:
                break
            if _unlink(path):
                removed += 1
            total -= size
        with self._lock:
            self._total = total
            self.stats.evicted += removed

    def discard_all(self) -> None:
        """Forget every cached frame (tests, and an operator's reset)."""
        for _, _, path in self._files():
            _unlink(path)
        with self._lock:
            self._total = 0


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
