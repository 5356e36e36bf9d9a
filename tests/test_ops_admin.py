"""``dicomweb-admin purge-rejected`` / ``orphans`` and kill -9 during a large delete."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time

import requests

from tests.httpclient import stow
from tests.ops_helpers import couch_doc, is_couch, metadata_count, store_study, stored_files
from tests.server import REPO, ServerProcess


def _admin(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dicomweb.admin", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_purge_rejected(server: ServerProcess) -> None:
    url = server.url
    study = store_study(url, (("CT", 2), ("MR", 2)))
    mr = study.series[1]
    before = None if is_couch(server) else stored_files(server)
    assert requests.post(f"{url}/studies/{study.uid}/series/{mr.uid}/reject/113001%5EDCM", timeout=30).status_code == 204
    if is_couch(server):
        where = ["--couchdb", server.extra[server.extra.index("--couchdb") + 1],
                 "--couchdb-db", server.extra[server.extra.index("--couchdb-db") + 1]]
    else:
        where = ["--data-dir", server.data_dir]
    assert "purged 0 " in _admin(*where, "purge-rejected", "--older-than", "1")  # too recent
    out = _admin(*where, "purge-rejected", "--older-than", "0")
    assert int(out.split()[1]) >= 2
    if is_couch(server):
        doc = couch_doc(server, "i:" + mr.sops[0])
        assert doc is not None and doc["state"] == "deleted" and "_attachments" not in doc
    else:
        assert before is not None and stored_files(server) == before - 2
    assert metadata_count(url, study.uid) == 2
    assert stow(url, mr.parts).status_code == 200  # stored anew
    assert metadata_count(url, study.uid) == 4
    assert requests.delete(f"{url}/studies/{study.uid}", timeout=30).status_code == 204


def test_kill_9_during_a_large_delete_leaves_no_entry_without_its_file(tmp_path: os.PathLike[str]) -> None:
    data = os.path.join(tmp_path, "data")
    server = ServerProcess(data, os.path.join(tmp_path, "server.log"))
    with server:
        study = store_study(server.url, tuple(("CT", 100) for _ in range(6)))
        deleting = threading.Thread(target=_delete_quietly, args=(f"{server.url}/studies/{study.uid}",))
        deleting.start()
        time.sleep(0.05)
        server.kill()
        deleting.join(30)
    conn = sqlite3.connect(os.path.join(data, "index.sqlite3"))
    paths = [row[0] for row in conn.execute("SELECT path FROM instances UNION ALL SELECT path FROM rejected")]
    conn.close()
    missing = [p for p in paths if not os.path.exists(os.path.join(data, "files", p))]
    assert missing == []
    with server:  # and what is indexed is whole: counts agree with retrieval
        assert metadata_count(server.url, study.uid) == len(paths)
        assert "0 orphan files" in _admin_stderr("--data-dir", data, "orphans")


def _delete_quietly(target: str) -> None:
    try:
        requests.delete(target, timeout=30)
    except requests.RequestException:
        pass  # the server died under us


def _admin_stderr(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dicomweb.admin", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr
    return done.stderr
