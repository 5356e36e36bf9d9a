"""Reject (OHIF ``supportsReject``) on every store: rejected instances leave
search and retrieval, storing them again restores them, DELETE purges them."""

from __future__ import annotations

import requests

from tests.httpclient import stow
from tests.ops_helpers import aggregates, couch_key_docs, is_couch, metadata_count, qido, store_study, stored_files
from tests.server import ServerProcess


def _reject(url: str, path: str, code: str = "113001%5EDCM") -> requests.Response:
    return requests.post(f"{url}{path}/reject/{code}", timeout=60)


def test_reject_series_then_restore_by_storing_again(server: ServerProcess) -> None:
    url = server.url
    study = store_study(url)
    _ct, mr = study.series
    base = f"/studies/{study.uid}"
    response = _reject(url, f"{base}/series/{mr.uid}")
    assert response.status_code == 204, response.text
    assert requests.get(f"{url}{base}/series/{mr.uid}", timeout=30).status_code == 404
    assert requests.get(f"{url}{base}/series/{mr.uid}/instances/{mr.sops[0]}/metadata", timeout=30).status_code == 404
    assert metadata_count(url, study.uid) == 3
    assert aggregates(server, study.uid) == (1, 3, ["CT"])
    assert _reject(url, f"{base}/series/{mr.uid}").status_code == 404  # nothing visible left to reject

    assert stow(url, mr.parts).status_code == 200  # the same bytes again: restored
    assert metadata_count(url, study.uid) == 5
    assert aggregates(server, study.uid) == (2, 5, ["CT", "MR"])
    assert requests.get(f"{url}{base}/series/{mr.uid}", timeout=30).status_code == 200
    assert requests.delete(url + base, timeout=60).status_code == 204


def test_reject_each_level_and_code_forms(server: ServerProcess) -> None:
    url = server.url
    study = store_study(url, (("CT", 3),))
    [ct] = study.series
    base = f"/studies/{study.uid}/series/{ct.uid}"
    assert _reject(url, f"{base}/instances/{ct.sops[0]}", "113037^DCM").status_code == 204
    assert requests.get(f"{url}{base}/instances/{ct.sops[0]}", timeout=30).status_code == 404
    assert aggregates(server, study.uid) == (1, 2, ["CT"])
    assert _reject(url, f"/studies/{study.uid}", "113039%5eDCM").status_code == 204
    assert requests.get(f"{url}/studies/{study.uid}", timeout=30).status_code == 404
    assert aggregates(server, study.uid) is None
    assert _reject(url, f"/studies/{study.uid}").status_code == 404


def test_reject_refuses_unknown_codes_and_bad_uids(server: ServerProcess) -> None:
    url = server.url
    study = store_study(url, (("CT", 1),))
    base = f"/studies/{study.uid}"
    for code in ("113002%5EDCM", "113001", "113001%5E99LOCAL", "x"):
        response = _reject(url, base, code)
        assert response.status_code == 400, code
        assert "113001^DCM" in response.text  # says which codes are known
    assert _reject(url, "/studies/1.2.x").status_code == 400
    assert _reject(url, "/studies/1.2.3.4.5.6.7.8.9").status_code == 404
    assert metadata_count(url, study.uid) == 1
    assert requests.delete(url + base, timeout=60).status_code == 204


def test_rejected_instances_leave_search(server: ServerProcess) -> None:
    url = server.url
    study = store_study(url)
    _ct, mr = study.series
    assert _reject(url, f"/studies/{study.uid}/series/{mr.uid}").status_code == 204
    [found] = qido(server, "/studies", StudyInstanceUID=study.uid, includefield="00080061")
    assert found["00201208"]["Value"] == [3]
    assert found["00080061"]["Value"] == ["CT"]
    assert qido(server, "/series", SeriesInstanceUID=mr.uid) == []
    assert qido(server, "/instances", SOPInstanceUID=mr.sops[0]) == []
    assert len(qido(server, f"/studies/{study.uid}/instances")) == 3


def test_delete_purges_rejected_instances(server: ServerProcess) -> None:
    url = server.url
    before = 0 if is_couch(server) else stored_files(server)
    study = store_study(url, (("CT", 2), ("MR", 2)))
    ct, mr = study.series
    assert _reject(url, f"/studies/{study.uid}/series/{mr.uid}").status_code == 204
    if is_couch(server):
        assert couch_key_docs(server, ct.sops[0])  # a stored instance has QIDO keys...
        assert couch_key_docs(server, mr.sops[0]) == []  # ...a rejected one none
        doc = _couch(server, mr.sops[0])
        assert doc is not None and doc["state"] == "rejected" and doc["_attachments"]  # kept for a restore
        assert doc["rejection"] == {"code": "113001", "scheme": "DCM"}
    else:
        assert stored_files(server) == before + 4  # rejected bytes are kept for a restore
    # The series is not visible, but DELETE still finds (and purges) its rejected instances.
    assert requests.delete(f"{url}/studies/{study.uid}/series/{mr.uid}", timeout=60).status_code == 204
    assert requests.delete(f"{url}/studies/{study.uid}/series/{mr.uid}", timeout=60).status_code == 404
    assert _reject(url, f"/studies/{study.uid}/series/{ct.uid}/instances/{ct.sops[0]}").status_code == 204
    assert requests.delete(f"{url}/studies/{study.uid}", timeout=60).status_code == 204
    assert requests.delete(f"{url}/studies/{study.uid}", timeout=60).status_code == 404
    if is_couch(server):
        stub = _couch(server, ct.sops[0])  # (no walrus in asserts: pytest's rewriting mixes them up)
        assert stub is not None and stub["state"] == "deleted"
        assert "_attachments" not in stub and "meta" not in stub
    else:
        assert stored_files(server) == before
    # Purged for good: storing again is a new instance, not a restore of old bytes.
    assert stow(url, mr.parts).status_code == 200
    assert aggregates(server, study.uid) == (1, 2, ["MR"])
    assert requests.delete(f"{url}/studies/{study.uid}", timeout=60).status_code == 204


def _couch(server: ServerProcess, sop: str) -> dict | None:
    from tests.ops_helpers import couch_doc

    return couch_doc(server, "i:" + sop)
