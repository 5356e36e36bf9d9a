"""The viewer benchmark: OHIF in headless Chromium opens one series over a slow link (issue 17).

One command, from the repository root::

    python bench/viewer.py              # 600 images 512x512, RTT 0/20/50 ms, 100 Mbit/s
    python bench/viewer.py --quick      # 120 images 256x256, RTT 0 and 50 ms

What is measured, for each server and each round-trip time: OHIF (the build
the e2e tests use, ``tests/ohif``) in ``wadors`` mode opens the viewer on a
study holding one series, in a fresh browser profile (nothing cached), and the
page's own timeline gives

- *first image*: when the first non-blank image shows in the viewport (the
  e2e tests' probe), from the start of navigation;
- *all images*: when every image of the series had arrived (the end of the
  first answer of each image's ``/frames/`` request, resource timing; OHIF
  prefetches the whole stack). With progressive loading that first answer is
  the low-resolution range; the table also counts the frame requests (the
  images OHIF refined to full resolution are fetched twice);
- the bytes of frames and metadata received (resource timing), and the
  protocol the browser negotiated.

The link: every server sits behind ``bench/netlink.py``, a TCP proxy adding the
round-trip time and limiting both directions to the bandwidth (100 Mbit/s by
default), shared by all connections, like a site's uplink. OHIF's own files
come from loopback without delay (the same for every server). The 0 ms row with
the bandwidth limit off (``--floor``) is the client-bound floor: the browser's
decoding and rendering on this machine.

Servers: ours (embedded store) over plain HTTP/1.1; ours over HTTP/2 + TLS
(a self-signed certificate made by the benchmark, Chromium told to accept
it), frames as stored; the same server with OHIF's progressive HTJ2K loading
(``--precompute htj2k`` on the server, so the frames are encoded once at
store time; OHIF fetches the first 16 KiB of each frame, draws it at a low
resolution, then the rest: "first image" is then the first low-resolution
image); Orthanc (Debian, with its DICOMweb plugin) behind nginx, which adds
the CORS headers Orthanc does not send (how Orthanc is deployed for OHIF),
HTTP/1.1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import netlink  # noqa: E402
import servers  # noqa: E402

from tests.dicomgen import ct_series  # noqa: E402
from tests.e2e.browser import CHROMIUM_ARGS, FIRST_IMAGE_PROBE, chromium_path  # noqa: E402
from tests.e2e.ohif import OhifSite, htj2k_progressive  # noqa: E402

SKIP_TOURS = "try { localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); } catch (e) {}"
# Resource timing keeps 250 entries unless told otherwise: a 600-image series needs more.
TIMING_BUFFER = "performance.setResourceTimingBufferSize(100000);"

NGINX_CORS = """daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream orthanc {{ server 127.0.0.1:{orthanc}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      if ($request_method = OPTIONS) {{
        add_header Access-Control-Allow-Origin "*";
        add_header Access-Control-Allow-Methods "GET, POST, OPTIONS";
        add_header Access-Control-Allow-Headers "*";
        add_header Access-Control-Max-Age 86400;
        return 204;
      }}
      add_header Access-Control-Allow-Origin "*" always;
      add_header Timing-Allow-Origin "*" always;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_pass http://orthanc;
    }}
  }}
}}
"""

# Run in the page: the timeline of the series' frames.
FRAME_TIMES = """
() => {
  const frames = performance.getEntriesByType('resource').filter(e => e.name.includes('/frames/'));
  const meta = performance.getEntriesByType('resource').filter(e => e.name.includes('/metadata'));
  const first = performance.getEntriesByName('dicomweb-first-image');
  // Each image's first answer (progressive loading fetches some images twice:
  // a first range, then the rest, for the images it shows at full resolution).
  const firstEnd = new Map();
  for (const e of frames) {
    const key = e.name.split('?')[0];
    firstEnd.set(key, Math.min(firstEnd.get(key) ?? Infinity, e.responseEnd));
  }
  return {
    frames: firstEnd.size,
    requests: frames.length,
    last: firstEnd.size ? Math.max(...firstEnd.values()) : null,
    frameBytes: frames.reduce((s, e) => s + (e.encodedBodySize || 0), 0),
    metaBytes: meta.reduce((s, e) => s + (e.encodedBodySize || 0), 0),
    metaDecoded: meta.reduce((s, e) => s + (e.decodedBodySize || 0), 0),
    protocol: frames.length ? frames[0].nextHopProtocol : '',
    firstImage: first.length ? first[0].startTime : null,
  };
}
"""


def say(msg: str) -> None:
    print(msg, flush=True)


class Target:
    """A server as OHIF sees it: ``scheme://127.0.0.1:port`` + ``root`` behind the link."""

    def __init__(self, name: str, host: str, port: int, root: str, scheme: str = "http",
                 procs: list[servers.Server] | None = None, stack_retrieve: dict[str, Any] | None = None) -> None:
        self.name, self.host, self.port, self.root, self.scheme = name, host, port, root, scheme
        self.procs = procs or []
        self.stack_retrieve = stack_retrieve

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


def load_series(count: int, size: int) -> tuple[str, list[bytes]]:
    import io

    from pydicom import dcmread

    data = list(ct_series(count, size=size, patient_name="VIEWER^BENCH", patient_id="VIEWER"))
    study = str(dcmread(io.BytesIO(data[0]), stop_before_pixels=True).StudyInstanceUID)
    return study, data


def self_signed(folder: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 (openssl), for the TLS runs."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return str(cert), str(key)


def _load(url: str, data: list[bytes], **kwargs: Any) -> None:
    from tests.httpclient import stow

    for i in range(0, len(data), 50):
        stow(url, data[i:i + 50], **kwargs).raise_for_status()


def _wait_precomputed(url: str, count: int, timeout: float = 600) -> None:
    """Until the server's metrics count ``count`` frames encoded at store time."""
    deadline = time.monotonic() + timeout
    done = 0.0
    while time.monotonic() < deadline:
        text = requests.get(url + "/metrics", verify=False, timeout=30).text
        done = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("dicomweb_derived_frames_total") and 'result="precomputed"' in line)
        if done >= count:
            return
        time.sleep(1)
    raise TimeoutError(f"{done:.0f} of {count} frames precomputed")


def start_ours(tmp: Path, data: list[bytes], tls: tuple[str, str] | None, htj2k: bool) -> list[Target]:
    server = servers.start_ours(REPO, tmp / "ours", "embedded", ["--max-request-size", "1G"])
    _load(server.url, data)
    port = int(server.url.rsplit(":", 1)[1])
    targets = [Target("ours, HTTP/1.1", "127.0.0.1", port, "", procs=[server])]
    if tls is None:
        return targets
    cert, key = tls
    extra = ["--max-request-size", "1G", "--port", f"ssl:0:interface=127.0.0.1:certKey={cert}:privateKey={key}"]
    if htj2k:
        extra += ["--precompute", "htj2k"]
    secure = servers.start_ours(REPO, tmp / "ours-tls", "embedded", extra)
    url = secure.url.replace("http://", "https://")
    _load(url, data, verify=False)  # a server of its own (its own data directory), loaded with the same series
    secure_port = int(secure.url.rsplit(":", 1)[1])
    targets.append(Target("ours, HTTP/2 + TLS", "127.0.0.1", secure_port, "", "https", [secure]))
    if htj2k:
        _wait_precomputed(url, len(data))
        targets.append(Target("ours, HTTP/2 + TLS, progressive HTJ2K", "127.0.0.1", secure_port, "", "https",
                              stack_retrieve=htj2k_progressive()))
    return targets


def start_orthanc(tmp: Path, data: list[bytes]) -> Target:
    servers.ensure_orthanc(say)
    if not servers.ensure_nginx(say):
        raise SystemExit("nginx is missing (apt-get install nginx): it adds the CORS headers Orthanc lacks")
    orthanc = servers.start_orthanc(tmp / "orthanc")
    base = orthanc.url.rsplit("/dicom-web", 1)[0]
    session = requests.Session()
    for part in data:
        session.post(base + "/instances", data=part, timeout=60).raise_for_status()
    port = servers.free_port()
    nginx_tmp = tmp / "nginx"
    nginx_tmp.mkdir(parents=True, exist_ok=True)
    conf = nginx_tmp / "nginx.conf"
    conf.write_text(NGINX_CORS.format(tmp=nginx_tmp, port=port, orthanc=base.rsplit(":", 1)[1]))
    log = nginx_tmp / "stderr.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(nginx_tmp), "-e", str(nginx_tmp / "error.log")],
                                stdout=out, stderr=subprocess.STDOUT)
    nginx = servers.Server("nginx", f"http://127.0.0.1:{port}", proc, log)
    servers.wait_http(nginx.url + "/system", proc, log)
    return Target(f"{orthanc.version} via nginx, HTTP/1.1", "127.0.0.1", port, "/dicom-web", procs=[orthanc, nginx])


def open_series(playwright: Any, executable: str, site: OhifSite, study: str, count: int,
                timeout: float) -> dict[str, Any]:
    """``count``: frame requests that make the whole series (images x requests per image)."""
    """One fresh browser opens the viewer; the page's figures once every frame arrived."""
    profile = tempfile.mkdtemp(prefix="viewer-bench-")
    context = playwright.chromium.launch_persistent_context(
        profile, executable_path=executable, headless=True, args=[*CHROMIUM_ARGS, "--ignore-certificate-errors"],
        viewport={"width": 1280, "height": 900}, service_workers="block", ignore_https_errors=True)
    try:
        for script in (TIMING_BUFFER, FIRST_IMAGE_PROBE, SKIP_TOURS):
            context.add_init_script(script)
        page = context.new_page()
        page.goto(f"{site.url}/viewer?StudyInstanceUIDs={study}")
        deadline = time.monotonic() + timeout
        figures: dict[str, Any] = {}
        while time.monotonic() < deadline:
            figures = page.evaluate(FRAME_TIMES)
            if figures["frames"] >= count and figures["firstImage"] is not None:
                return figures
            page.wait_for_timeout(200)
        raise TimeoutError(f"{figures.get('frames')} of {count} frames after {timeout:.0f} s: {figures}")
    finally:
        context.close()
        shutil.rmtree(profile, ignore_errors=True)


def run(targets: list[Target], rtts: list[float], mbit: float | None, study: str, count: int, repeat: int,
        timeout: float) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise SystemExit("no Chromium: run scripts/install-system-deps")
    rows = []
    with sync_playwright() as playwright:
        for rtt in rtts:
            for target in targets:
                samples = []
                for _ in range(repeat):
                    with netlink.NetLink((target.host, target.port), rtt_ms=rtt, mbit=mbit) as link:
                        url = f"{target.scheme}://127.0.0.1:{link.port}{target.root}"
                        with OhifSite(url, "wadors", stack_retrieve=target.stack_retrieve) as site:
                            samples.append(open_series(playwright, executable, site, study, count, timeout))
                first = statistics.median(s["firstImage"] for s in samples) / 1000
                last = statistics.median(s["last"] for s in samples) / 1000
                row = {"rtt": rtt, "server": target.name, "first": first, "all": last,
                       "frame_mb": samples[0]["frameBytes"] / 1e6, "meta_kb": samples[0]["metaBytes"] / 1e3,
                       "meta_decoded_kb": samples[0]["metaDecoded"] / 1e3, "protocol": samples[0]["protocol"],
                       "requests": samples[0]["requests"]}
                say(f"  RTT {rtt:>3.0f} ms  {target.name:<40} first {first:6.2f} s  all {last:6.2f} s  "
                    f"({row['protocol'] or '?'})")
                rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], mbit: float | None) -> str:
    link = f"{mbit:.0f} Mbit/s" if mbit else "unlimited"
    out = [f"| RTT | server | first image (s) | all images (s) | frame requests | frames (MB) | "
           f"metadata on the wire (kB) | protocol | link {link} |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        out.append(f"| {row['rtt']:.0f} ms | {row['server']} | {row['first']:.2f} | {row['all']:.2f} | "
                   f"{row['requests']} | {row['frame_mb']:.1f} | {row['meta_kb']:.0f} (of {row['meta_decoded_kb']:.0f}) | "
                   f"{row['protocol']} | |")
    return "\n".join(out)


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for rtt in sorted({r["rtt"] for r in rows}):
        at = [r for r in rows if r["rtt"] == rtt]
        peer = next((r for r in at if r["server"].startswith("Orthanc")), None)
        if peer is None:
            continue
        for row in at:
            if row is not peer:
                lines.append(f"RTT {rtt:.0f} ms, {row['server']}: first image {row['first'] / peer['first']:.2f}x, "
                             f"all images {row['all'] / peer['all']:.2f}x Orthanc's")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="120 images 256x256, RTT 0 and 50 ms")
    parser.add_argument("--images", type=int)
    parser.add_argument("--size", type=int, help="rows = columns of each image")
    parser.add_argument("--rtt", help="comma-separated round-trip times in ms [0,20,50]")
    parser.add_argument("--mbit", type=float, default=100.0, help="link bandwidth; 0 = unlimited")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median)")
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument("--no-tls", action="store_true", help="no HTTP/2 + TLS runs")
    parser.add_argument("--no-htj2k", action="store_true", help="no progressive HTJ2K run")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    count = args.images or (120 if args.quick else 600)
    size = args.size or (256 if args.quick else 512)
    rtts = [float(x) for x in (args.rtt or ("0,50" if args.quick else "0,20,50")).split(",")]
    mbit = args.mbit or None
    tmp = Path(tempfile.mkdtemp(prefix="viewer-bench-"))
    say(f"generating a {count}-image series ({size}x{size}, 16-bit) ...")
    study, data = load_series(count, size)
    targets: list[Target] = []
    try:
        tls = None if args.no_tls else self_signed(tmp / "tls")
        targets += start_ours(tmp, data, tls, not args.no_htj2k)
        if not args.no_orthanc:
            targets.append(start_orthanc(tmp, data))
        say(f"OHIF opens the series ({count} images), link {args.mbit:.0f} Mbit/s:")
        rows = run(targets, rtts, mbit, study, count, args.repeat, timeout=120 + count * 0.5)
    finally:
        for target in targets:
            target.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    flags = " ".join(a for a in sys.argv[1:])
    say("")
    say(f"`python bench/viewer.py {flags}`".replace(" `", "`"))
    say("")
    say(table(rows, mbit))
    say("")
    for line in ratios(rows):
        say(line)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
