"""Compressed metadata and its cache: bytes on the wire and time to serve.

Starts ``twistd dicomweb`` (embedded store, a temporary directory), stores a
600-instance CT series made from a real CT header (pydicom's ``CT_small.dcm``:
a GE scanner's ~100 attributes, UIDs, positions and numbers changed per
instance), then measures the series metadata (what OHIF fetches per series):

- bytes on the wire: plain, gzip and brotli (the body as sent, not decoded);
- time to serve it, from the request to the last byte: the first request for
  a version of the series (metadata read and compressed) and the next ones
  (compressed body from the cache), per coding; and a 304 (``If-None-Match``).

Each "first" sample follows the storing of one more instance in the series,
so every one meets a new version. Times are medians, measured with
``requests`` on loopback (no decoding counted).

    python bench/cache.py [--quick] [--instances 600]
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import statistics
import sys
import tempfile
import time

import pydicom
import requests
from pydicom.uid import generate_uid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import dicomgen
from tests.httpclient import multipart_body
from tests.server import ServerProcess

CODINGS = ("identity", "gzip", "br")


def series(count: int, study: str, series_uid: str, start: int = 0) -> list[bytes]:
    """``count`` instances of one CT series from a real CT header."""
    template = pydicom.dcmread(dicomgen.sample_file("CT_small.dcm"))
    out = []
    for n in range(start, start + count):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = [-158.1, -179.0, round(-6.4 - n * 1.25, 2)]
        ds.SliceLocation = round(-6.4 - n * 1.25, 2)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def stow(url: str, parts: list[bytes], batch: int = 50) -> None:
    for i in range(0, len(parts), batch):
        body, boundary = multipart_body(parts[i:i + batch])
        response = requests.post(f"{url}/studies", data=body, timeout=600, headers={
            "Content-Type": f"multipart/related; type=application/dicom; boundary={boundary}",
            "Accept": "application/dicom+json"})
        response.raise_for_status()


def fetch(url: str, coding: str, **headers: str) -> tuple[float, int, requests.Response]:
    """Seconds to the last byte, bytes as sent, the response."""
    start = time.perf_counter()
    response = requests.get(url, headers={"Accept-Encoding": coding, **headers}, stream=True, timeout=120)
    body = response.raw.read(decode_content=False)
    elapsed = time.perf_counter() - start
    response.close()
    return elapsed, len(body), response


def cache_hits(base: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith('dicomweb_metadata_cache_lookups_total{result="hit"}'):
            return float(line.split()[-1])
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 first-request samples, 10 cached (else 7 and 30)")
    parser.add_argument("--instances", type=int, default=600)
    args = parser.parse_args()
    firsts, cached = (3, 10) if args.quick else (7, 30)

    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        server = ServerProcess(os.path.join(tmp, "data"), os.path.join(tmp, "server.log"), "--max-request-size", "1G")
        with server:
            study, series_uid = generate_uid(), generate_uid()
            print(f"storing {args.instances} CT instances ...", flush=True)
            stow(server.url, series(args.instances, study, series_uid))
            target = f"{server.url}/studies/{study}/series/{series_uid}/metadata"

            sizes = {c: fetch(target, c)[1] for c in CODINGS}
            first: dict[str, list[float]] = {c: [] for c in CODINGS}
            again: dict[str, list[float]] = {c: [] for c in CODINGS}
            extra = args.instances
            for _ in range(firsts):
                stow(server.url, series(1, study, series_uid, start=extra))  # a new version of the series
                extra += 1
                for coding in CODINGS:
                    first[coding].append(fetch(target, coding)[0])
                    for _ in range(cached):
                        again[coding].append(fetch(target, coding)[0])
            hits = cache_hits(server.url)
            tag = fetch(target, "gzip")[2].headers["ETag"]
            not_modified = [fetch(target, "gzip", **{"If-None-Match": tag})[0] for _ in range(cached)]

    plain = sizes["identity"]
    ms = lambda values: f"{statistics.median(values) * 1000:.1f} ms"  # noqa: E731
    print(f"\nseries metadata, {args.instances} CT instances (+ up to {firsts} stored while measuring)\n")
    print("| coding | bytes on the wire | ratio | first request (new version) | next requests (cache) |")
    print("|---|---|---|---|---|")
    for coding in CODINGS:
        ratio = sizes[coding] / plain
        print(f"| {coding} | {sizes[coding]:,} | {ratio:.4f} | {ms(first[coding])} | {ms(again[coding])} |")
    print(f"| 304 (If-None-Match) | 0 | | | {ms(not_modified)} |")
    print(f"\ncache hits counted by the server: {hits:.0f} (expected {2 * firsts * cached})")
    best = min(sizes["gzip"], sizes["br"]) / plain
    print(f"gzip / plain = {sizes['gzip'] / plain:.4f} (target <= 0.2); best coding / plain = {best:.4f}")


if __name__ == "__main__":
    main()
