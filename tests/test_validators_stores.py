"""Entity tags follow the stored data on every store (the real server, over
real HTTP, on the embedded store and on CouchDB): a new instance, a replaced
one, a reject, a restore and a delete each give the study and series
metadata a tag they never had, and 304 answers the current one. Compressed
metadata over a real socket, with Content-Length."""

from __future__ import annotations

import gzip

import requests
from pydicom.uid import generate_uid

from tests import dicomgen
from tests.httpclient import stow

OCTETS = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def _tag(url: str, accept: str | None = None, encoding: str = "identity") -> str:
    headers = {"Accept-Encoding": encoding} | ({"Accept": accept} if accept else {})
    response = requests.get(url, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.headers["ETag"]


def test_tags_follow_every_change_of_the_study(url: str) -> None:
    study, series = generate_uid(), generate_uid()
    sops = [str(generate_uid()) for _ in range(3)]
    assert stow(url, [dicomgen.ct_instance(study, series, n + 1, sop_uid=s) for n, s in enumerate(sops)]).ok
    study_url = f"{url}/studies/{study}"
    series_url = f"{study_url}/series/{series}"
    frame = f"{series_url}/instances/{sops[0]}/frames/1"

    def state() -> tuple[str, str, str]:
        return _tag(f"{study_url}/metadata"), _tag(f"{series_url}/metadata"), _tag(frame, OCTETS)

    seen = [state()]
    assert stow(url, [dicomgen.ct_instance(study, series, 9)]).ok  # a new instance
    seen.append(state())
    assert seen[-1][2] == seen[-2][2]  # the frame did not change
    assert stow(url, [dicomgen.ct_instance(study, series, 1, sop_uid=sops[0], seed=7)]).ok  # replaced
    seen.append(state())
    assert seen[-1][2] != seen[-2][2]
    last = f"{series_url}/instances/{sops[2]}"
    assert requests.post(f"{last}/reject/113001%5EDCM", timeout=60).status_code == 204
    seen.append(state())
    assert stow(url, [dicomgen.ct_instance(study, series, 3, sop_uid=sops[2])]).ok  # restored
    seen.append(state())
    assert requests.delete(last, timeout=60).status_code == 204
    seen.append(state())
    for level in (0, 1):
        assert len({s[level] for s in seen}) == len(seen)  # never an earlier tag again
    metadata, _, _ = seen[-1]
    again = requests.get(f"{study_url}/metadata", headers={"If-None-Match": metadata, "Accept-Encoding": "identity"},
                         timeout=60)
    assert again.status_code == 304 and again.content == b""
    stale = requests.get(f"{study_url}/metadata", headers={"If-None-Match": seen[0][0]}, timeout=60)
    assert stale.status_code == 200 and len(stale.json()) == 3


def test_metadata_is_compressed_on_a_real_socket(url: str) -> None:
    study, series = generate_uid(), generate_uid()
    assert stow(url, list(dicomgen.ct_series(20, study_uid=study, series_uid=series))).ok
    target = f"{url}/studies/{study}/series/{series}/metadata"
    plain = requests.get(target, headers={"Accept-Encoding": "identity"}, timeout=60)
    raw = requests.get(target, headers={"Accept-Encoding": "gzip"}, timeout=60, stream=True)
    body = raw.raw.read(decode_content=False)
    assert raw.headers["Content-Encoding"] == "gzip"
    assert int(raw.headers["Content-Length"]) == len(body) < len(plain.content) // 5
    assert gzip.decompress(body) == plain.content
    # requests (and dicomweb_client) ask for gzip and brotli and decode them
    assert requests.get(target, timeout=60).json() == plain.json()
