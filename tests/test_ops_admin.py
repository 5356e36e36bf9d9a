"""``dicomweb-admin purge-rejected`` / ``orphans`` and kill -9 during a large delete.

The crash test kills the server only once the delete is seen under way
(rows or files of the study gone on the embedded store, the journal written
on CouchDB), and fails if it never starts.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from tests.httpclient import stow
from tests.ops_helpers import Study, aggregates, couch_doc, is_couch, metadata_count, store_study, stored_files
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
    purged = int(out.split()[1])
    assert purged >= 2  # this series, and any instance another test left rejected on the shared server
    if is_couch(server):
        doc = couch_doc(server, "i:" + mr.sops[0])
        assert doc is not None and doc["state"] == "deleted" and "_attachments" not in doc
    else:
        assert before is not None and stored_files(server) == before - purged  # one file per purged instance
    assert metadata_count(url, study.uid) == 2
    assert stow(url, mr.parts).status_code == 200  # stored anew
    assert metadata_count(url, study.uid) == 4
    assert requests.delete(f"{url}/studies/{study.uid}", timeout=30).status_code == 204


#: Instances of the study the crash test deletes: enough that the delete
#: (index change, then one unlink per instance) takes long enough to be seen
#: under way and killed part-way. The CouchDB store's first write is the
#: journal, seen at once; a smaller study keeps that test short (storing
#: 600 instances into pouchdb-server alone takes half a minute).
CRASH_LAYOUT = {"embedded": tuple(("CT", 100) for _ in range(6)), "couch": (("CT", 50), ("MR", 50))}
#: How long the delete may take to show itself before the test fails.
START_TIMEOUT = 20.0


def test_kill_9_during_a_large_delete_leaves_no_entry_without_its_file(fresh_server: ServerProcess) -> None:
    server = fresh_server
    with server:
        study = store_study(server.url, CRASH_LAYOUT["couch" if is_couch(server) else "embedded"])
        watch = _CouchDeleteWatch(server, study) if is_couch(server) else _EmbeddedDeleteWatch(server, study)
        deleting = threading.Thread(target=_delete_quietly, args=(f"{server.url}/studies/{study.uid}",))
        deleting.start()
        watch.wait_until_under_way(START_TIMEOUT)  # fails the test if the delete never starts
        server.kill()
        deleting.join(30)
    watch.check_whole_after_restart()


class _EmbeddedDeleteWatch:
    """The embedded store commits the index change (one transaction), then
    unlinks the files: the delete is under way once the study's rows are
    gone or one of its files is."""

    def __init__(self, server: ServerProcess, study: Study) -> None:
        self.server, self.study = server, study
        self.db = os.path.join(server.data_dir, "index.sqlite3")
        self.paths = [os.path.join(server.data_dir, "files", p) for p in self._study_paths()]
        assert len(self.paths) == len(study.all_parts())

    def _study_paths(self) -> list[str]:
        # A reader on a WAL database never blocks the server's writer.
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return [row[0] for row in conn.execute("SELECT path FROM instances WHERE study_uid=?", (self.study.uid,))]
        finally:
            conn.close()

    def under_way(self) -> bool:
        return any(not os.path.exists(p) for p in self.paths) or len(self._study_paths()) < len(self.paths)

    def wait_until_under_way(self, timeout: float) -> None:
        _poll(self.under_way, timeout)

    def check_whole_after_restart(self) -> None:
        data = self.server.data_dir
        conn = sqlite3.connect(self.db)
        paths = [row[0] for row in conn.execute("SELECT path FROM instances UNION ALL SELECT path FROM rejected")]
        conn.close()
        missing = [p for p in paths if not os.path.exists(os.path.join(data, "files", p))]
        assert missing == []
        # One transaction: the study is indexed whole or not at all.
        assert len(paths) in (0, len(self.paths))
        with self.server:  # and what is indexed is whole: counts agree with retrieval
            assert metadata_count(self.server.url, self.study.uid) == len(paths)
        # Files not yet unlinked when the process died are orphans of this
        # study only: harmless, listed, and removed by the admin command
        # (which counts files older than a minute: these are made so).
        left = [p for p in self.paths if os.path.exists(p)]
        for path in left:
            os.utime(path, (time.time() - 120, time.time() - 120))
        left_count = len(left)
        assert f"{left_count if not paths else 0} orphan files" in _admin_stderr("--data-dir", data, "orphans")
        _admin_stderr("--data-dir", data, "orphans", "--delete")
        assert "0 orphan files" in _admin_stderr("--data-dir", data, "orphans")


class _CouchDeleteWatch:
    """The CouchDB store writes a journal document before its first change:
    the delete is under way once the database changes after the STOW."""

    def __init__(self, server: ServerProcess, study: Study) -> None:
        self.server, self.study = server, study
        self.db = server.extra[server.extra.index("--couchdb") + 1] + "/" + \
            server.extra[server.extra.index("--couchdb-db") + 1]
        info = requests.get(self.db, timeout=30)
        info.raise_for_status()
        self.since = info.json()["update_seq"]

    def wait_until_under_way(self, timeout: float) -> None:
        # A long poll answers with the first change after ``since``.
        try:
            changes = requests.get(f"{self.db}/_changes", timeout=timeout, params={
                "since": self.since, "feed": "longpoll", "timeout": int(timeout * 1000), "include_docs": "true"})
        except requests.Timeout:
            raise AssertionError(f"the delete did not start within {timeout} s") from None
        changes.raise_for_status()
        docs = [row.get("doc") or {} for row in changes.json()["results"]]
        assert docs, f"the delete did not start within {timeout} s"
        assert any((d.get("doctype") == "journal" and d.get("studies") == [self.study.uid])
                   or d.get("_id", "").startswith("i:") for d in docs), docs

    def _instance_docs(self) -> list[dict[str, Any]]:
        keys = ["i:" + sop for series in self.study.series for sop in series.sops]
        found = requests.post(f"{self.db}/_all_docs", params={"include_docs": "true"}, json={"keys": keys},
                              timeout=60)
        found.raise_for_status()
        return [row["doc"] for row in found.json()["rows"]]

    def check_whole_after_restart(self) -> None:
        docs = self._instance_docs()
        stored = [d for d in docs if d.get("state") == "stored"]
        # An instance is stored with its bytes, or a stub without them.
        assert all(d.get("_attachments") for d in stored)
        assert all(d.get("state") == "deleted" and "_attachments" not in d for d in docs if d not in stored)
        with self.server:  # the start-up sweep repairs the aggregates of the interrupted delete
            assert metadata_count(self.server.url, self.study.uid) == len(stored)
            found = aggregates(self.server, self.study.uid)
            assert (found[1] if found else 0) == len(stored)


def _poll(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"the delete did not start within {timeout} s"
        time.sleep(0.001)


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


def test_couch_orphan_key_documents_are_listed_and_removed(server: ServerProcess) -> None:
    """Keys a crash left (of an instance document never written, of a
    generation its owner no longer has) are found by `dicomweb-admin orphans`
    and removed with --delete; the keys of what is stored stay, searches too."""
    if not is_couch(server):
        return  # the embedded store's orphans are files: test_kill_9_during_a_large_delete
    from dicomweb.store.couchsearch import key_doc_id

    study = store_study(server.url, (("CT", 2),))
    url = server.extra[server.extra.index("--couchdb") + 1]
    db = server.extra[server.extra.index("--couchdb-db") + 1]
    instance = couch_doc(server, "i:" + study.series[0].sops[0])
    assert instance is not None
    left = [{"_id": key_doc_id("instance", "9.9.9", "gone", "00100010", "NEVER"), "doctype": "qkey",
             "l": "instance", "u": "9.9.9", "g": "gone", "p": "00100010", "k": "NEVER", "t": study.uid},
            {"_id": key_doc_id("instance", instance["sop"], "older", "00200013", "1"), "doctype": "qkey",
             "l": "instance", "u": instance["sop"], "g": "older", "p": "00200013", "k": "1", "t": study.uid}]
    requests.post(f"{url}/{db}/_bulk_docs", json={"docs": left}, timeout=30).raise_for_status()
    args = ("--couchdb", url, "--couchdb-db", db, "orphans", "--grace", "0")
    listed = _admin(*args).split()
    assert set(listed) >= {d["_id"] for d in left}
    _admin(*args, "--delete")
    assert _admin(*args).split() == []
    assert all(couch_doc(server, d["_id"]) is None for d in left)
    found = requests.get(f"{server.url}/studies", params={"StudyInstanceUID": study.uid, "ModalitiesInStudy": "CT"},
                         timeout=30).json()
    assert len(found) == 1 and found[0]["00201208"]["Value"] == [2]
    by_name = requests.get(f"{server.url}/studies/{study.uid}/instances", params={"InstanceNumber": "1"},
                           timeout=30).json()
    assert [i["00080018"]["Value"][0] for i in by_name] == [study.series[0].sops[0]]
