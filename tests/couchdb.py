"""Run pouchdb-server (a CouchDB-API server, pinned in package-lock.json) for tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import requests

from tests.server import REPO, ChildProcess

POUCHDB_SERVER = os.path.join(REPO, "node_modules", "pouchdb-server", "bin", "pouchdb-server")


def available() -> bool:
    return os.path.exists(POUCHDB_SERVER) and shutil.which("node") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CouchServer(ChildProcess):
    """pouchdb-server on a free loopback port; in memory, or LevelDB in ``directory``.

    It runs with its working directory in ``directory`` (it writes its
    config.json and log.txt there). ``kill``/``start`` keep the port, so a
    frontend configured with :attr:`url` reconnects by itself.
    """

    def __init__(self, directory: str, in_memory: bool = True) -> None:
        self.directory = directory
        self.in_memory = in_memory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(directory, "stdout.txt")
        os.makedirs(directory, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> CouchServer:
        args = ["node", "--unhandled-rejections=warn", POUCHDB_SERVER, "-o", "127.0.0.1", "-p", str(self.port),
                "-n", "--no-color"]
        args += ["--in-memory"] if self.in_memory else ["-d", os.path.join(self.directory, "db") + os.sep]
        os.makedirs(os.path.join(self.directory, "db"), exist_ok=True)
        out = open(os.path.join(self.directory, "stdout.txt"), "ab")
        self.proc = subprocess.Popen(args, cwd=self.directory, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("pouchdb-server exited:\n" + self.log()[-2000:])
            try:
                if requests.get(self.url, timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("pouchdb-server did not start:\n" + self.log()[-2000:])

