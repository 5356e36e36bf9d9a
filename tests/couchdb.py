"""Run pouchdb-server (a CouchDB-API server, pinned in package-lock.json) for tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import Any

import requests

from tests.server import REPO, ChildProcess, ServerProcess

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



class TwoSites:
    """Two pouchdb-servers, site A and site B, each an in-memory CouchDB-API
    server of its own, and continuous replication of a database both ways
    through ``_replicator`` documents (one at each source site), as the
    README's "Several sites" sets up CouchDB 3."""

    def __init__(self, directory: str) -> None:
        self.a = CouchServer(os.path.join(directory, "site-a"))
        self.b = CouchServer(os.path.join(directory, "site-b"))

    def start(self) -> TwoSites:
        self.a.start()
        try:
            self.b.start()
        except Exception:
            self.a.stop()
            raise
        return self

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()

    def __enter__(self) -> TwoSites:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def replicate(self, db: str) -> None:
        """Start continuous replication of ``db`` A -> B and B -> A (the
        databases exist: the frontends created them)."""
        for source, target in ((self.a, self.b), (self.b, self.a)):
            doc: dict[str, Any] = {"source": f"{source.url}/{db}", "target": f"{target.url}/{db}", "continuous": True}
            requests.put(f"{source.url}/_replicator/{db}-to-{target.port}", json=doc, timeout=10).raise_for_status()

    def pause(self, db: str) -> None:
        """Stop both replications of ``db`` (delete their documents)."""
        for source, target in ((self.a, self.b), (self.b, self.a)):
            url = f"{source.url}/_replicator/{db}-to-{target.port}"
            doc = requests.get(url, timeout=10)
            if doc.ok:
                requests.delete(url, params={"rev": doc.json()["_rev"]}, timeout=10).raise_for_status()

    def in_step(self, db: str) -> bool:
        """Whether both sites hold the same winning revision of every document."""
        revs = []
        for site in (self.a, self.b):
            rows = requests.get(f"{site.url}/{db}/_all_docs", timeout=30).json()["rows"]
            revs.append({r["id"]: r["value"]["rev"] for r in rows if not r["id"].startswith("_design/")})
        return revs[0] == revs[1]


def start_frontends(couch_url: str, db: str, base: str, count: int = 4) -> list[ServerProcess]:
    """``count`` frontends (server processes) on database ``db``, started at
    the same moment; each has its data directory and log under ``base``."""
    from concurrent.futures import ThreadPoolExecutor

    fronts = [ServerProcess(os.path.join(base, f"f{n}"), os.path.join(base, f"f{n}.log"),
                            "--couchdb", couch_url, "--couchdb-db", db) for n in range(count)]
    try:
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda f: f.start(60), fronts))
    except BaseException:
        for front in fronts:
            front.stop()
        raise
    return fronts
