"""HTJ2K frames: encode time, size against JPEG 2000 lossless and native, and
time to the first bytes of a frame (a ``Range``) against the whole frame.

    python bench/htj2k.py [--quick]

Part 1 encodes frames in this process (the server's own encoder functions).
Part 2 starts our server (embedded store, loopback), stores a 512x512 CT and
times frame requests: the first HTJ2K request (transcoded), the next ones
(derived frame cache), and a ``Range`` of the first 16 KiB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pydicom
import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dicomweb.dicom.pixels import HTJ2K, HTJ2K_RPCL, J2K_LOSSLESS
from dicomweb.dicom.transcode import encode_array
from tests import dicomgen
from tests.httpclient import stow
from tests.server import ServerProcess

ACCEPT = f'multipart/related; type="image/jphc"; transfer-syntax={HTJ2K_RPCL}'
FIRST_BYTES = 16 * 1024


def _timed(fn: Callable[[], bytes], reps: int) -> tuple[float, bytes]:
    times, out = [], b""
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _frames(quick: bool) -> list[tuple[str, pydicom.Dataset]]:
    ct = pydicom.dcmread(pydicom.filebase.DicomBytesIO(
        dicomgen.ct_instance("1.2.3", "1.2.3.4", 1, size=512, seed=1)))
    out = [("CT 512x512 16-bit (generated)", ct)]
    names = ["MR2_J2KR.dcm"] + ([] if quick else ["RG3_UNCR.dcm", "US1_J2KR.dcm"])
    for name in names:
        try:
            out.append((name, pydicom.dcmread(dicomgen.sample_file(name))))
        except (OSError, FileNotFoundError):
            continue
    return out


def encode_table(quick: bool) -> list[str]:
    reps = 3 if quick else 7
    lines = ["| frame | native bytes | HTJ2K lossless bytes (ms) | J2K lossless bytes (ms) | HTJ2K lossy bytes (ms) |",
             "|---|---|---|---|---|"]
    for name, ds in _frames(quick):
        arr = ds.pixel_array
        frame = arr[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr
        if frame.ndim == 3 and ds.PhotometricInterpretation.startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"  # pixel_array converted it
        cells = []
        for target in (HTJ2K_RPCL, J2K_LOSSLESS, HTJ2K):
            seconds, data = _timed(lambda f=frame, d=ds, t=target: encode_array(f, d, t), reps)
            cells.append(f"{len(data):,} ({seconds * 1000:.1f})")
        lines.append(f"| {name} {frame.shape[1]}x{frame.shape[0]} | {frame.nbytes:,} | " + " | ".join(cells) + " |")
    return lines


def _get(url: str, headers: dict[str, str]) -> tuple[float, int, int]:
    start = time.perf_counter()
    response = requests.get(url, headers=headers, timeout=60)
    return time.perf_counter() - start, response.status_code, len(response.content)


def server_table(quick: bool) -> list[str]:
    reps = 5 if quick else 20
    with tempfile.TemporaryDirectory() as tmp:
        proc = ServerProcess(os.path.join(tmp, "data"), os.path.join(tmp, "server.log"))
        with proc:
            raw = dicomgen.ct_instance("1.2.826.0.1.3680043.8.498.7", "1.2.826.0.1.3680043.8.498.8", 1,
                                       size=512, seed=2)
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw))
            assert stow(proc.url, [raw]).status_code == 200
            url = (f"{proc.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                   f"/instances/{ds.SOPInstanceUID}/frames/1")
            first, _, size = _get(url, {"Accept": ACCEPT})
            whole = [_get(url, {"Accept": ACCEPT})[0] for _ in range(reps)]
            ranged = [_get(url, {"Accept": ACCEPT, "Range": f"bytes=0-{FIRST_BYTES - 1}"}) for _ in range(reps)]
            native = [_get(url, {"Accept": "multipart/related; type=application/octet-stream"})[0]
                      for _ in range(reps)]
            assert all(status == 206 for _, status, _ in ranged)
    ms = lambda values: statistics.median(values) * 1000  # noqa: E731
    return [
        "| request (512x512 CT frame, loopback) | bytes | median ms |",
        "|---|---|---|",
        f"| HTJ2K, first request (transcoded, then kept) | {size:,} | {first * 1000:.1f} |",
        f"| HTJ2K, again (derived frame cache) | {size:,} | {ms(whole):.1f} |",
        f"| HTJ2K, Range of the first {FIRST_BYTES // 1024} KiB | {ranged[0][2]:,} | {ms([t for t, _, _ in ranged]):.1f} |",
        f"| native (as stored) | {512 * 512 * 2:,} | {ms(native):.1f} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and repetitions")
    args = parser.parse_args()
    np.seterr(all="ignore")
    print("\n".join(encode_table(args.quick)))
    print()
    print("\n".join(server_table(args.quick)))


if __name__ == "__main__":
    main()
