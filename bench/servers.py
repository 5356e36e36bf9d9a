"""The processes under test: Orthanc, our server (per store), pouchdb-server, a static file server.

Each is a child process on free loopback ports, with its config, data and log
in a temporary directory, stopped by its own pid at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

BENCH = Path(__file__).resolve().parent
ORTHANC_PACKAGES = ["orthanc", "orthanc-dicomweb", "orthanc-gdcm"]
_SITE_RE = re.compile(r"Site(?: \(TLS\))? starting on (\d+)")


def free_port() -> int:
    """A port free right now on loopback (tiny race, acceptable for a benchmark)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited ({proc.returncode}):\n{tail(log)}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}: not up after {timeout} s:\n{tail(log)}")


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return ""


@dataclass
class Server:
    """A started child process. ``url`` is its DICOMweb root (no trailing slash)."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    version: str = ""
    children: list[Server] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for child in self.children:
            child.stop()


# -- Orthanc --------------------------------------------------------------------


def _dicomweb_plugin() -> str | None:
    """The DICOMweb plugin .so, as the Debian package lists it."""
    try:
        out = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    libs = [line for line in out.splitlines() if line.endswith(".so") and os.path.exists(line)]
    return libs[0] if libs else None


def _gdcm_plugin() -> str | None:
    try:
        out = subprocess.run(["dpkg", "-L", "orthanc-gdcm"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    libs = [line for line in out.splitlines() if line.endswith(".so") and os.path.exists(line)]
    return libs[0] if libs else None


def ensure_orthanc(say: callable) -> None:  # type: ignore[valid-type]
    """Install Orthanc and its plugins from Debian if they are missing."""
    if shutil.which("Orthanc") and _dicomweb_plugin() and _gdcm_plugin():
        return
    if os.geteuid() != 0:
        raise SystemExit("Orthanc is missing: run as root, or `sudo apt-get install " + " ".join(ORTHANC_PACKAGES) + "`")
    say("installing " + " ".join(ORTHANC_PACKAGES) + " with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    # policy-rc.d in containers refuses to start the system service; we start our own.
    subprocess.run(["apt-get", "install", "-y", "-qq", *ORTHANC_PACKAGES], check=True, env=env)


def orthanc_config(tmp: Path, http_port: int, dicom_port: int) -> dict[str, object]:
    """Orthanc's defaults, made explicit where they matter to the comparison."""
    return {
        "Name": "bench-orthanc",
        "StorageDirectory": str(tmp / "storage"),
        "IndexDirectory": str(tmp / "index"),
        "StorageCompression": False,  # our store keeps the bytes as received, so does this one
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "BENCHORTHANC",
        # DICOM listens on all interfaces in this version; accept nothing from unknown peers.
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "RemoteAccessAllowed": False,  # HTTP from loopback only
        "AuthenticationEnabled": False,
        "SaveJobs": False,
        "Plugins": [p for p in (_dicomweb_plugin(), _gdcm_plugin()) if p],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                     "Host": f"127.0.0.1:{http_port}", "Ssl": False},
    }


def start_orthanc(tmp: Path) -> Server:
    tmp.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = tmp / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(tmp, http_port, dicom_port), indent=2))
    log = tmp / "orthanc.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["Orthanc", str(config)], cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    wait_http(base + "/system", proc, log)
    system = requests.get(base + "/system", timeout=5).json()
    plugins = requests.get(base + "/plugins/dicom-web", timeout=5)
    dw = plugins.json().get("Version", "?") if plugins.ok else "missing"
    return Server("Orthanc", base + "/dicom-web", proc, log, f"Orthanc {system.get('Version')}, DICOMweb plugin {dw}")


# -- our server -----------------------------------------------------------------


def _twistd(repo: Path) -> list[str]:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _env(repo: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(repo), "PYTHONDONTWRITEBYTECODE": "1"}


def supports_option(repo: Path, option: str) -> bool:
    """Whether ``twistd dicomweb --help`` of that checkout lists ``option``."""
    out = subprocess.run([*_twistd(repo), "dicomweb", "--help"], cwd=repo, env=_env(repo),
                         capture_output=True, text=True, timeout=60)
    return option in out.stdout


def start_ours(repo: Path, tmp: Path, store: str, extra: list[str] | None = None) -> Server:
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / "dicomweb.log"
    args = [*_twistd(repo), "-n", "--pidfile=", f"--logfile={log}", "dicomweb",
            "--port", "tcp:0:interface=127.0.0.1", "--data-dir", str(tmp / "data"), *(extra or [])]
    proc = subprocess.Popen(args, cwd=repo, env=_env(repo), stdout=subprocess.DEVNULL, stderr=open(tmp / "stderr", "wb"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dicomweb exited:\n{tail(tmp / 'stderr')}\n{tail(log)}")
        match = _SITE_RE.search(tail(log, 100_000))
        if match:
            url = f"http://127.0.0.1:{match.group(1)}"
            return Server(f"ours [{store}]", url, proc, log)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("dicomweb did not start:\n" + tail(log))


def start_pouchdb(repo: Path, tmp: Path) -> Server | None:
    """pouchdb-server (CouchDB API) on disk (LevelDB); None when not installed."""
    binary = repo / "node_modules" / ".bin" / "pouchdb-server"
    node = shutil.which("node")
    if not binary.exists() or not node:
        return None
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = tmp / "pouchdb.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([node, "--unhandled-rejections=warn", str(binary.resolve()), "-o", "127.0.0.1",
                                 "-p", str(port), "-d", str(tmp / "db")], cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", proc, log)
    return Server("pouchdb-server", url, proc, log)


# -- static file server ---------------------------------------------------------


def start_static(root: Path, tmp: Path) -> Server:
    """twisted.web.static.File over the corpus: the ceiling for retrieve throughput."""
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / "static.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(BENCH / "static_server.py"), str(root)],
                                stdout=subprocess.PIPE, stderr=out)
    line = proc.stdout.readline().decode() if proc.stdout else ""
    if not line.startswith("PORT "):
        raise RuntimeError("static server did not start:\n" + tail(log))
    return Server("twisted static", f"http://127.0.0.1:{int(line.split()[1])}", proc, log, "twisted.web.static.File")


def ensure_nginx(say: callable) -> bool:  # type: ignore[valid-type]
    """nginx from Debian, for the sendfile() ceiling; optional (False when unavailable)."""
    if shutil.which("nginx"):
        return True
    if os.geteuid() != 0:
        return False
    say("installing nginx with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], env=env, capture_output=True)
    return done.returncode == 0 and bool(shutil.which("nginx"))


NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  types {{ application/dicom dcm; }}
  server {{
    listen 127.0.0.1:{port};
    root {root};
  }}
}}
"""


def start_nginx(root: Path, tmp: Path) -> Server:
    """nginx (one worker, sendfile) over the corpus: what a file server can do at best."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root.resolve()))
    log = tmp / "stderr.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "error.log")],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", proc, log)
    return Server("nginx", url, proc, log, "nginx (sendfile)")


# -- memory -------------------------------------------------------------------


class RSSSampler:
    """Samples the RSS of each server process every 50 ms in a thread.

    ``peak`` is the whole-run peak; ``window()`` gives (start, peak) per server
    over a block, for growth figures during one operation.
    """

    def __init__(self, servers: list[Server], interval: float = 0.05) -> None:
        self.procs = {s.name: psutil.Process(s.pid) for s in servers}
        self.peak: dict[str, int] = dict.fromkeys(self.procs, 0)
        self._windows: list[dict[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def rss(self, name: str) -> int:
        try:
            return int(self.procs[name].memory_info().rss)
        except psutil.Error:
            return 0

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            for name in self.procs:
                value = self.rss(name)
                self.peak[name] = max(self.peak[name], value)
                for window in list(self._windows):
                    window[name] = max(window.get(name, 0), value)

    @contextmanager
    def window(self) -> Iterator[tuple[dict[str, int], dict[str, int]]]:
        start = {name: self.rss(name) for name in self.procs}
        peak: dict[str, int] = dict(start)
        self._windows.append(peak)
        try:
            yield start, peak
        finally:
            time.sleep(0.1)  # one more sample after the operation
            self._windows.remove(peak)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
