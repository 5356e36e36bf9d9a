"""Starting CouchDB frontends: any number at once on a new database all come
up; one that cannot reach its database exits with a failure status, so a
supervisor restarts it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

import pytest_twisted
import requests
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.python.threadpool import ThreadPool

from dicomweb.store.couch import CouchStore
from tests import couchdb
from tests.server import REPO


@pytest_twisted.ensureDeferred
async def test_eight_stores_opening_one_new_database_in_the_same_instant_all_open(
        couch_server: couchdb.CouchServer) -> None:
    db = "open-" + uuid.uuid4().hex[:8]
    pool = ThreadPool(0, 1)
    stores = [CouchStore(couch_server.url, db, global_reactor, pool) for _ in range(8)]  # type: ignore[arg-type]
    try:
        results = await DeferredList([ensureDeferred(s.open()) for s in stores], consumeErrors=True)
        assert [ok for ok, _ in results] == [True] * 8, [r for ok, r in results if not ok]
    finally:
        for store in stores:
            await store.close()


def test_four_frontends_started_at_once_on_a_new_database_all_become_ready(
        couch_server: couchdb.CouchServer, tmp_path: os.PathLike[str]) -> None:
    db = "start-" + uuid.uuid4().hex[:8]
    fronts = couchdb.start_frontends(couch_server.url, db, str(tmp_path))
    try:
        for front in fronts:
            assert requests.get(front.url + "/ready", timeout=10).status_code == 200
        schema = requests.get(f"{couch_server.url}/{db}/_local/dicomweb-schema").json()
        assert schema["version"] >= 4
    finally:
        for front in fronts:
            front.stop()
    for front in fronts:
        assert "Traceback" not in front.log(), front.log()[-3000:]
        # A frontend stopped cleanly takes its heartbeat with it.
        frontend = re.search(r"frontend ([0-9a-f]+)\)", front.log())
        assert frontend
        beat = requests.get(f"{couch_server.url}/{db}/_local/dicomweb-frontend-{frontend.group(1)}", timeout=10)
        assert beat.status_code == 404


def test_a_frontend_whose_database_does_not_answer_exits_with_status_1(tmp_path: os.PathLike[str]) -> None:
    log = os.path.join(tmp_path, "server.log")
    args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            f"--logfile={log}", "dicomweb", "--port", "tcp:0:interface=127.0.0.1",
            "--data-dir", os.path.join(tmp_path, "data"),
            "--couchdb", f"http://127.0.0.1:{couchdb.free_port()}", "--couchdb-wait", "2"]
    started = time.monotonic()
    proc = subprocess.run(args, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, timeout=60)
    assert proc.returncode == 1
    assert time.monotonic() - started < 30
    with open(log, encoding="utf-8") as fp:
        text = fp.read()
    assert "did not answer within 2s" in text
    assert "Site starting" not in text
