"""File helpers: a read-only window onto part of a file, in-kernel copies,
and early writeback."""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import sys
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12


def read_at(fp: IO[bytes], offset: int, length: int) -> bytes:
    """``length`` bytes of ``fp`` from ``offset`` without moving a shared
    file position, so several threads can read one spooled body at once."""
    if isinstance(fp, io.BytesIO):
        return bytes(fp.getbuffer()[offset:offset + length])
    try:
        fd = fp.fileno()
    except (OSError, AttributeError, io.UnsupportedOperation):
        fp.seek(offset)
        data: bytes = fp.read(length)
        return data
    return os.pread(fd, length, offset)


class FileWindow(io.RawIOBase):
    """A seekable, read-only view of ``length`` bytes of ``fp`` from ``offset``.

    Lets pydicom read one multipart part in place, inside the spooled request
    body, without copying it first.
    """

    def __init__(self, fp: IO[bytes], offset: int, length: int) -> None:
        super().__init__()
        self._fp = fp
        self._offset = offset
        self._length = length
        self._pos = 0

    #: pydicom's FileDataset reads ``.name``; a window has no file name of its own.
    name = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            new = pos
        elif whence == os.SEEK_CUR:
            new = self._pos + pos
        elif whence == os.SEEK_END:
            new = self._length + pos
        else:
            raise ValueError(f"bad whence {whence}")
        if new < 0:
            raise ValueError("negative seek position")
        self._pos = new
        return new

    def readinto(self, buffer: Buffer) -> int:
        remaining = self._length - self._pos
        if remaining <= 0:
            return 0
        view = memoryview(buffer)
        want = min(len(view), remaining)
        data = read_at(self._fp, self._offset + self._pos, want)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def __len__(self) -> int:
        return self._length


def copy_range(src: IO[bytes], offset: int, length: int, dst: IO[bytes], chunk: int = 1 << 20) -> None:
    """Copy ``length`` bytes of ``src`` from ``offset`` into ``dst``.

    Uses ``os.copy_file_range`` (in-kernel, no user-space copy) when both are
    real files, else a bounded read/write loop.
    """
    try:
        src_fd, dst_fd = src.fileno(), dst.fileno()
    except (OSError, AttributeError, io.UnsupportedOperation):
        src_fd = dst_fd = -1
    if src_fd >= 0 and hasattr(os, "copy_file_range"):
        dst.flush()
        done = 0
        try:
            while done < length:
                n = os.copy_file_range(src_fd, dst_fd, length - done, offset + done)
                if n == 0:
                    break
                done += n
        except OSError:
            pass
        if done == length:
            dst.seek(0, os.SEEK_END)
            return
        offset, length = offset + done, length - done
        dst.seek(0, os.SEEK_END)
    while length > 0:
        data = read_at(src, offset, min(chunk, length))
        if not data:
            raise EOFError("source ended before the range did")
        dst.write(data)
        offset += len(data)
        length -= len(data)


def _libc_sync_file_range() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages to disk now,
    without waiting (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``).

    This is no durability guarantee (the caller still fsyncs): it lets the
    disk work while the caller writes the next files, so that the fsyncs of a
    batch find most data already written (measured here: 10 files of 0.5 MB,
    fsyncs 4.5 ms -> 1.2 ms). A no-op where unavailable.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def fsync_path(path: str) -> None:
    """Make the file at ``path`` durable (its data and its inode)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` durable (files created, renamed into it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
