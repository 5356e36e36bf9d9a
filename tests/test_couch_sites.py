"""Two sites replicating both ways: two pouchdb-servers with continuous
replication A <-> B (``_replicator`` documents), a frontend at each.

What one site stores the other finds with the same QIDO answers and serves
with the same bytes; deletes and rejects follow; two sites writing into one
study while they cannot see each other agree once replication catches up,
and the same SOP Instance UID written at both converges to one winner.
Every wait polls with a deadline (replication status, documents in step,
answers equal), never a fixed sleep.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from pydicom.uid import generate_uid

from tests import couchdb, dicomgen
from tests.httpclient import split_multipart, stow
from tests.server import ServerProcess
from tests.stowload import wait_for
from tests.test_qido_conformance import SCOPE, STUDIES, STUDY_CASES, Corpus, _instance

REPLICATION_DEADLINE = 60.0


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[couchdb.TwoSites]:
    if not couchdb.available():
        pytest.skip("pouchdb-server is not installed (run: npm ci --ignore-scripts)")
    with couchdb.TwoSites(str(tmp_path_factory.mktemp("sites"))) as two:
        yield two


@dataclass
class Pair:
    """A frontend at each site on one replicated database."""

    sites: couchdb.TwoSites
    db: str
    a: ServerProcess
    b: ServerProcess

    def replicate(self) -> None:
        self.sites.replicate(self.db)

    def settled(self, *checks: Callable[[], bool]) -> None:
        """Wait until both sites hold the same revisions and ``checks`` hold."""
        wait_for(lambda: all(check() for check in checks) and self.sites.in_step(self.db), REPLICATION_DEADLINE)


@pytest.fixture
def pair(sites: couchdb.TwoSites, tmp_path: os.PathLike[str]) -> Iterator[Pair]:
    """Both frontends, replication not started yet (``pair.replicate()``)."""
    db = "sites-" + uuid.uuid4().hex[:8]
    a = ServerProcess(os.path.join(tmp_path, "a"), os.path.join(tmp_path, "a.log"),
                      "--couchdb", sites.a.url, "--couchdb-db", db)
    b = ServerProcess(os.path.join(tmp_path, "b"), os.path.join(tmp_path, "b.log"),
                      "--couchdb", sites.b.url, "--couchdb-db", db)
    with a, b:
        yield Pair(sites, db, a, b)
        sites.pause(db)
    for proc in (a, b):
        assert "Traceback" not in proc.log(), proc.log()[-3000:]


def _local(value: Any) -> Any:
    """An answer with the frontend's own address taken out of every URL."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "BulkDataURI" or (key == "Value" and value.get("vr") == "UR"):
                item = [u.split("/", 3)[3] for u in item] if isinstance(item, list) else item.split("/", 3)[3]
            out[key] = _local(item)
        return out
    if isinstance(value, list):
        return [_local(v) for v in value]
    return value


def _json(proc: ServerProcess, path: str, params: Any = ()) -> Any:
    response = requests.get(proc.url + path, params=list(params), timeout=30)
    assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return _local(response.json())


def _count(proc: ServerProcess, study: str) -> int | None:
    found = requests.get(f"{proc.url}/studies", params={"StudyInstanceUID": study}, timeout=30).json()
    return found[0]["00201208"]["Value"][0] if found else None


def _sops(proc: ServerProcess, study: str) -> set[str]:
    response = requests.get(f"{proc.url}/studies/{study}/instances", timeout=30)
    return {i["00080018"]["Value"][0] for i in response.json()} if response.status_code == 200 else set()


def _conformance_queries(corpus: Corpus) -> list[tuple[str, list[tuple[str, str]]]]:
    queries = [("/studies", [SCOPE, *params]) for _, params, _ in STUDY_CASES]
    queries += [("/series", [SCOPE]), ("/series", [SCOPE, ("Modality", "MR")]),
                ("/instances", [SCOPE]), ("/instances", [SCOPE, ("InstanceNumber", "2")]),
                ("/patients", [SCOPE]), ("/studies", [SCOPE, ("includefield", "all")])]
    queries += [(f"/studies/{corpus.uid[s.label]}/series", []) for s in STUDIES]
    queries += [(f"/studies/{corpus.uid[s.label]}/instances", []) for s in STUDIES]
    return queries


def test_studies_stored_at_either_site_are_found_and_retrieved_identically_at_both(pair: Pair) -> None:
    pair.replicate()
    corpus = Corpus()
    parts: dict[str, list[bytes]] = {"a": [], "b": []}
    for n, study in enumerate(STUDIES):
        corpus.uid[study.label] = generate_uid()
        for series in study.series:
            corpus.uid[series[0]] = generate_uid()
            parts["a" if n % 2 == 0 else "b"] += [_instance(corpus, study, series, k)
                                                  for k in range(1, series[5] + 1)]
    assert stow(pair.a.url, parts["a"]).status_code == 200
    assert stow(pair.b.url, parts["b"]).status_code == 200
    total = sum(len(p) for p in parts.values())
    queries = _conformance_queries(corpus)

    def same_answers() -> bool:
        return all(_json(pair.a, path, params) == _json(pair.b, path, params) for path, params in queries)

    pair.settled(lambda: len(_json(pair.b, "/instances", [SCOPE])) == total
                 and len(_json(pair.a, "/instances", [SCOPE])) == total, same_answers)
    for name, params, expected in STUDY_CASES:  # and the answers are the right ones
        found = {s["0020000D"]["Value"][0] for s in _json(pair.b, "/studies", [SCOPE, *params])}
        assert found == {corpus.uid[s] for s in expected}, name
    studies = _json(pair.b, "/studies", [SCOPE])
    assert sum(s["00201208"]["Value"][0] for s in studies) == total
    s4 = next(s for s in studies if s["0020000D"]["Value"][0] == corpus.uid["s4"])
    assert s4["00080061"]["Value"] == ["CT", "MR"] and s4["00201206"]["Value"] == [3]
    for study in STUDIES:
        uid = corpus.uid[study.label]
        bodies = [[body for _, body in split_multipart(requests.get(f"{p.url}/studies/{uid}", timeout=30))]
                  for p in (pair.a, pair.b)]
        assert bodies[0] == bodies[1] and len(bodies[0]) == sum(se[5] for se in study.series)
        assert _json(pair.a, f"/studies/{uid}/metadata") == _json(pair.b, f"/studies/{uid}/metadata")
    sop = corpus.instances["s1ct"][0]
    frame = f"/studies/{corpus.uid['s1']}/series/{corpus.uid['s1ct']}/instances/{sop}/frames/1"
    frames = [requests.get(p.url + frame, headers={"Accept": "multipart/related; type=application/octet-stream"},
                           timeout=30) for p in (pair.a, pair.b)]
    assert [split_multipart(f)[0][1] for f in frames] == [bytes(16)] * 2


def test_deletes_and_rejects_replicate_both_ways(pair: Pair) -> None:
    pair.replicate()
    study, ct, mr = generate_uid(), generate_uid(), generate_uid()
    assert stow(pair.a.url, list(dicomgen.ct_series(3, study_uid=study, series_uid=ct, size=16))).status_code == 200
    assert stow(pair.a.url, list(dicomgen.ct_series(2, study_uid=study, series_uid=mr, modality="MR",
                                                    size=16))).status_code == 200
    pair.settled(lambda: _count(pair.b, study) == 5)
    assert requests.delete(f"{pair.b.url}/studies/{study}/series/{ct}", timeout=30).status_code == 204
    pair.settled(lambda: _count(pair.a, study) == 2 and _count(pair.b, study) == 2)
    assert _json(pair.a, "/studies", [("StudyInstanceUID", study)])[0]["00080061"]["Value"] == ["MR"]
    assert requests.get(f"{pair.a.url}/studies/{study}/series/{ct}/metadata", timeout=30).status_code == 404
    assert requests.post(f"{pair.a.url}/studies/{study}/reject/113001%5EDCM", timeout=30).status_code == 204
    pair.settled(lambda: _count(pair.b, study) is None and _count(pair.a, study) is None)
    assert requests.get(f"{pair.b.url}/studies/{study}", timeout=30).status_code == 404


def test_two_sites_storing_into_one_study_before_they_see_each_other_agree_on_both(pair: Pair) -> None:
    study, series_a, series_b = generate_uid(), generate_uid(), generate_uid()
    at_a = [dicomgen.ct_instance(study, series_a, n, size=16) for n in (1, 2)]
    at_b = [dicomgen.ct_instance(study, series_b, 1, size=16, modality="MR"),
            dicomgen.ct_instance(study, series_a, 3, size=16)]
    assert stow(pair.a.url, at_a).status_code == 200
    assert stow(pair.b.url, at_b).status_code == 200
    assert (_count(pair.a, study), _count(pair.b, study)) == (2, 2)  # each sees only its own
    pair.replicate()
    pair.settled(lambda: _count(pair.a, study) == 4 and _count(pair.b, study) == 4,
                 lambda: len(_sops(pair.a, study)) == 4 and _sops(pair.a, study) == _sops(pair.b, study))
    for proc in (pair.a, pair.b):
        found = _json(proc, "/studies", [("StudyInstanceUID", study)])[0]
        assert found["00201206"]["Value"] == [2] and found["00080061"]["Value"] == ["CT", "MR"]
        series = {s["0020000E"]["Value"][0]: s["00201209"]["Value"][0]
                  for s in _json(proc, f"/studies/{study}/series")}
        assert series == {series_a: 3, series_b: 1}
        assert len(_json(proc, "/instances", [("StudyInstanceUID", study), ("Modality", "CT")])) == 3


def test_the_same_instance_stored_at_both_sites_at_once_converges_to_one_winner(pair: Pair) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    version_a = dicomgen.ct_instance(study, series, 7, size=16, sop_uid=sop, seed=1)
    version_b = dicomgen.ct_instance(study, series, 8, size=16, sop_uid=sop, seed=2)
    other = dicomgen.ct_instance(study, series, 1, size=16)
    assert stow(pair.a.url, [version_a, other]).status_code == 200
    assert stow(pair.b.url, [version_b]).status_code == 200
    pair.replicate()
    path = f"/studies/{study}/series/{series}/instances/{sop}"

    def body(proc: ServerProcess) -> bytes:
        return split_multipart(requests.get(proc.url + path, timeout=30))[0][1]

    def no_conflicts() -> bool:
        return all(not requests.get(f"{site.url}/{pair.db}/i:{sop}", params={"conflicts": "true"},
                                    timeout=30).json().get("_conflicts") for site in (pair.sites.a, pair.sites.b))

    # Bodies are read once the sites are in step: a retrieve that races the
    # arrival of the winning version loses its attachment mid-answer.
    pair.settled(no_conflicts, lambda: _count(pair.a, study) == 2 and _count(pair.b, study) == 2)
    pair.settled(no_conflicts, lambda: body(pair.a) == body(pair.b))
    winner = body(pair.a)
    assert winner in (version_a, version_b)
    number, loser_number = ("7", "8") if winner == version_a else ("8", "7")
    for proc in (pair.a, pair.b):
        assert _sops(proc, study) == {sop, _sop_of(other)}
        assert [i["00080018"]["Value"][0] for i in _json(proc, "/instances", [("InstanceNumber", number)])] == [sop]
        assert _json(proc, "/instances", [("StudyInstanceUID", study), ("InstanceNumber", loser_number)]) == []
        keys = _key_docs(pair.sites.a if proc is pair.a else pair.sites.b, pair.db, sop)
        assert {k["k"] for k in keys if k["p"] == "00200013"} == {number}


def _sop_of(part: bytes) -> str:
    import io

    import pydicom

    return str(pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True).SOPInstanceUID)


def _key_docs(site: couchdb.CouchServer, db: str, sop: str) -> list[dict[str, Any]]:
    """The instance's QIDO key documents at ``site``."""
    response = requests.post(f"{site.url}/{db}/_find", timeout=30, json={
        "selector": {"doctype": "qkey", "u": sop}, "limit": 1000})
    docs: list[dict[str, Any]] = response.json()["docs"]
    return docs


def test_admin_status_shows_the_sequence_the_follower_and_the_replications(pair: Pair) -> None:
    import json
    import subprocess
    import sys

    from tests.server import REPO

    pair.replicate()
    study = generate_uid()
    assert stow(pair.a.url, list(dicomgen.ct_series(2, study_uid=study, size=16))).status_code == 200
    pair.settled(lambda: _count(pair.b, study) == 2)

    def admin(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "dicomweb.admin", "--couchdb", pair.sites.b.url,
                               "--couchdb-db", pair.db, "status", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": REPO})
        assert done.returncode == 0, done.stderr
        return done.stdout

    def follower_caught_up() -> bool:
        found = json.loads(admin("--json"))
        return bool(found["follower"]["seq"] is not None and found["follower"]["lag"] == 0)

    wait_for(follower_caught_up, REPLICATION_DEADLINE)
    found = json.loads(admin("--json"))
    assert found["update_seq"] and found["site"] and found["schema"] >= 4
    assert {(r["source"], r["target"], r["continuous"]) for r in found["replications"]} == {
        (f"{pair.sites.b.url}/{pair.db}", f"{pair.sites.a.url}/{pair.db}", True)}
    assert found["replications"][0]["state"] == "triggered"
    text = admin()
    assert "0 changes behind" in text and f"-> {pair.sites.a.url}/{pair.db}" in text
