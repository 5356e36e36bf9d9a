"""DELETE at study, series and instance level on every store: bytes,
metadata and index entries go, aggregates follow, a second delete is 404."""

from __future__ import annotations

import requests

from tests.httpclient import stow
from tests.ops_helpers import aggregates, couch_key_docs, is_couch, metadata_count, qido, store_study, stored_files, value
from tests.server import ServerProcess

STUDY_SERIES, STUDY_INSTANCES, MODALITIES, SERIES_INSTANCES = "00201206", "00201208", "00080061", "00201209"


def _delete(url: str, path: str) -> int:
    return requests.delete(url + path, timeout=60).status_code


def test_delete_each_level_updates_every_count(server: ServerProcess) -> None:
    url = server.url
    study = store_study(url)
    ct, mr = study.series
    base = f"/studies/{study.uid}"

    assert _delete(url, f"{base}/series/{ct.uid}/instances/{ct.sops[0]}") == 204
    assert requests.get(f"{url}{base}/series/{ct.uid}/instances/{ct.sops[0]}", timeout=30).status_code == 404
    assert _delete(url, f"{base}/series/{ct.uid}/instances/{ct.sops[0]}") == 404
    assert metadata_count(url, study.uid) == 4
    assert aggregates(server, study.uid) == (2, 4, ["CT", "MR"])

    assert _delete(url, f"{base}/series/{mr.uid}") == 204
    assert _delete(url, f"{base}/series/{mr.uid}") == 404
    assert requests.get(f"{url}{base}/series/{mr.uid}/metadata", timeout=30).status_code == 404
    assert metadata_count(url, study.uid) == 2
    assert aggregates(server, study.uid) == (1, 2, ["CT"])
    assert _delete(url, base) == 204
    assert aggregates(server, study.uid) is None
    assert stow(url, ct.parts[1:]).status_code == 200  # the same two CT instances again
    assert aggregates(server, study.uid) == (1, 2, ["CT"])
    assert _delete(url, base) == 204
    assert _delete(url, base) == 404
    assert requests.get(url + base, timeout=30).status_code == 404
    assert metadata_count(url, study.uid) == 0


def test_qido_after_deletes(server: ServerProcess) -> None:
    url = server.url
    study = store_study(url, (("CT", 3), ("MR", 2), ("SR", 1)))
    ct, mr, sr = study.series
    base = f"/studies/{study.uid}"
    assert _delete(url, f"{base}/series/{ct.uid}/instances/{ct.sops[0]}") == 204
    assert _delete(url, f"{base}/series/{mr.uid}") == 204
    assert _delete(url, f"{base}/series/{sr.uid}/instances/{sr.sops[0]}") == 204  # the series' last one

    [found] = qido(server, "/studies", StudyInstanceUID=study.uid, includefield="00080061")
    assert (value(found, STUDY_SERIES), value(found, STUDY_INSTANCES), value(found, MODALITIES)) == (1, 2, "CT")
    assert qido(server, "/studies", StudyInstanceUID=study.uid, ModalitiesInStudy="MR") == []
    [series] = qido(server, f"{base}/series")
    assert (value(series, "0020000E"), value(series, SERIES_INSTANCES)) == (ct.uid, 2)
    assert len(qido(server, f"{base}/instances")) == 2
    assert qido(server, "/instances", SOPInstanceUID=ct.sops[0]) == []
    assert qido(server, "/series", SeriesInstanceUID=mr.uid) == []

    assert _delete(url, base) == 204
    if is_couch(server):
        assert [d for sop in ct.sops for d in couch_key_docs(server, sop)] == []
        assert couch_key_docs(server, study.uid) == couch_key_docs(server, ct.uid) == []
    assert qido(server, "/studies", StudyInstanceUID=study.uid) == []
    assert qido(server, "/series", SeriesInstanceUID=ct.uid) == []


def test_delete_answers_400_for_invalid_uids_and_404_for_unknown(server: ServerProcess) -> None:
    url = server.url
    assert _delete(url, "/studies/1.2.x") == 400
    assert _delete(url, "/studies/1.2.3/series/abc") == 400
    assert _delete(url, "/studies/1.2.3.999999") == 404
    study = store_study(url, (("CT", 1),))
    series = study.series[0]
    # An instance of another series (or study) is not this resource.
    assert _delete(url, f"/studies/{study.uid}/series/1.2.3/instances/{series.sops[0]}") == 404
    assert _delete(url, f"/studies/1.2.3/series/{series.uid}") == 404
    assert metadata_count(url, study.uid) == 1
    assert _delete(url, f"/studies/{study.uid}") == 204


def test_delete_reclaims_files_on_the_embedded_store(server: ServerProcess) -> None:
    if is_couch(server):
        return  # attachments go with the deleted revision (CouchDB reclaims them at compaction)
    before = stored_files(server)
    study = store_study(server.url, (("CT", 4), ("MR", 3)))
    assert stored_files(server) == before + 7
    assert _delete(server.url, f"/studies/{study.uid}/series/{study.series[1].uid}") == 204
    assert stored_files(server) == before + 4
    assert _delete(server.url, f"/studies/{study.uid}") == 204
    assert stored_files(server) == before


def test_store_again_after_delete(server: ServerProcess) -> None:
    study = store_study(server.url, (("CT", 2),))
    assert _delete(server.url, f"/studies/{study.uid}") == 204
    assert stow(server.url, study.all_parts()).status_code == 200
    assert metadata_count(server.url, study.uid) == 2
    assert aggregates(server, study.uid) == (1, 2, ["CT"])
