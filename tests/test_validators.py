"""Entity tags, 304s, Cache-Control and byte ranges (README "Compression and
caching"), in this process on the embedded store (tests/inprocess.py). That
tags change with the stored data on every store is tested against the real
server processes in tests/test_validators_stores.py."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator

import pytest
from pydicom.uid import generate_uid

from dicomweb.web import validators
from tests import dicomgen
from tests.httpclient import split_multipart, stow
from tests.inprocess import Client, InProcessServer, Response
from tests.test_compression import Study, get

OCTETS = "multipart/related; type=application/octet-stream; transfer-syntax=*"
J2K = "emri_small_jpeg_2k_lossless.dcm"  # 10 frames of JPEG 2000, one fragment each


@pytest.fixture
def server(tmp_path: os.PathLike[str]) -> Iterator[InProcessServer]:
    with InProcessServer(os.path.join(tmp_path, "data")) as inproc:
        yield inproc


@pytest.fixture
def http(server: InProcessServer) -> Client:
    return server.client


@pytest.fixture
def study(http: Client) -> Study:
    study, series = generate_uid(), generate_uid()
    sops = [str(generate_uid()) for _ in range(3)]
    parts = [dicomgen.ct_instance(study, series, n + 1, sop_uid=sop) for n, sop in enumerate(sops)]
    assert stow(http, parts).status_code == 200
    return Study(study, series, sops)


@pytest.fixture
def multiframe(http: Client) -> Study:
    import pydicom

    with open(dicomgen.sample_file(J2K), "rb") as fp:
        data = fp.read()
    ds = pydicom.dcmread(dicomgen.sample_file(J2K), stop_before_pixels=True)
    assert stow(http, [data]).status_code == 200
    return Study(ds.StudyInstanceUID, ds.SeriesInstanceUID, [ds.SOPInstanceUID])


def resources(study: Study) -> dict[str, tuple[str, str | None]]:
    """Every resource that carries a tag: path and Accept."""
    instance = study.instance_path()
    return {
        "study metadata": (f"{study.path}/metadata", None),
        "series metadata": (f"{study.series_path}/metadata", None),
        "instance metadata": (f"{instance}/metadata", None),
        "study": (study.path, "multipart/related; type=application/dicom; transfer-syntax=*"),
        "series zip": (study.series_path, "application/zip"),
        "instance": (instance, None),
        "frames": (f"{instance}/frames/1", OCTETS),
        "bulk": (f"{instance}/bulk/7FE00010", None),
        "rendered": (f"{instance}/rendered", None),
        "frame thumbnail": (f"{instance}/frames/1/thumbnail", "image/png"),
        "series thumbnail": (f"{study.series_path}/thumbnail", None),
        "wado-uri": (f"/wado?requestType=WADO&studyUID={study.study}&seriesUID={study.series}"
                     f"&objectUID={study.sops[0]}&contentType=application/dicom", None),
    }


RESOURCES = list(resources(Study("1", "2", ["3"])))


@pytest.mark.parametrize("name", RESOURCES)
def test_every_resource_has_a_stable_tag_and_answers_304_to_it(http: Client, study: Study, name: str) -> None:
    path, accept = resources(study)[name]
    first = get(http, path, None, accept)
    assert first.status_code == 200, first.text
    tag = first.headers["ETag"]
    assert tag.startswith(('"', 'W/"')) and tag.endswith('"')
    assert first.headers["Cache-Control"] == "private, no-cache"
    assert get(http, path, None, accept).headers["ETag"] == tag
    for header in (tag, f'"nope", {tag}', "*", tag.removeprefix("W/"), "W/" + tag.removeprefix("W/")):
        again = get(http, path, None, accept, **{"If-None-Match": header})
        assert again.status_code == 304, header
        assert again.content == b""
        assert again.headers["ETag"] == tag
        assert "Content-Type" not in again.headers
    assert get(http, path, None, accept, **{"If-None-Match": '"other"'}).status_code == 200


def test_searches_are_for_this_users_cache_only(http: Client, study: Study) -> None:
    response = get(http, f"/studies?StudyInstanceUID={study.study}", None)
    assert response.headers["Cache-Control"] == "private, no-cache" and "ETag" not in response.headers


def test_a_head_request_gets_the_tag_too(server: InProcessServer, study: Study) -> None:
    response = server.client.head(f"{study.path}/metadata", raw=True)
    assert response.headers["ETag"] == get(server.client, f"{study.path}/metadata", None).headers["ETag"]


def test_representations_have_different_tags(http: Client, study: Study) -> None:
    path = f"{study.series_path}/metadata"
    json_plain = get(http, path, None).headers["ETag"]
    json_gzip = get(http, path, "gzip").headers["ETag"]
    json_br = get(http, path, "br").headers["ETag"]
    xml = get(http, path, None, "application/dicom+xml").headers["ETag"]
    assert len({json_plain, json_gzip, json_br, xml}) == 4
    frames = f"{study.instance_path()}/frames/1"
    stored = get(http, frames, None, OCTETS).headers["ETag"]
    rle = get(http, frames, None, "multipart/related; type=image/dicom-rle").headers["ETag"]
    single = get(http, frames, None, "application/octet-stream").headers["ETag"]
    assert len({stored, rle, single}) == 3
    rendered = f"{study.instance_path()}/rendered"
    assert get(http, rendered, None, "image/png").headers["ETag"] != get(http, rendered, None).headers["ETag"]
    assert get(http, rendered + "?window=40,400", None).headers["ETag"] != get(http, rendered, None).headers["ETag"]


def test_a_304_for_the_plain_tag_when_the_client_now_accepts_gzip(http: Client, study: Study) -> None:
    """The client's stored copy is the same content: no need to send it again coded."""
    path = f"{study.path}/metadata"
    plain = get(http, path, None).headers["ETag"]
    assert get(http, path, "gzip", **{"If-None-Match": plain}).status_code == 304
    coded = get(http, path, "gzip").headers["ETag"]
    assert gzip.decompress(get(http, path, "gzip").content)
    assert get(http, path, "gzip", **{"If-None-Match": coded}).status_code == 304
    assert get(http, path, None, **{"If-None-Match": coded}).status_code == 200  # a plain body is not coded


def tags(http: Client, study: Study, names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        path, accept = resources(study)[name]
        response = get(http, path, None, accept)
        assert response.status_code == 200, (name, response.text)
        out[name] = response.headers["ETag"]
    return out


GROUP = ["study metadata", "series metadata", "study"]
INSTANCE = ["instance metadata", "instance", "frames", "bulk", "rendered", "wado-uri"]


def test_a_new_instance_changes_the_study_and_series_tags_only(http: Client, study: Study) -> None:
    before = tags(http, study, GROUP + INSTANCE)
    assert stow(http, [dicomgen.ct_instance(study.study, study.series, 7)]).status_code == 200
    after = tags(http, study, GROUP + INSTANCE)
    assert all(after[n] != before[n] for n in GROUP)
    assert all(after[n] == before[n] for n in INSTANCE)


def test_another_series_keeps_its_tag(http: Client, study: Study) -> None:
    before = tags(http, study, ["series metadata", "study metadata"])
    assert stow(http, [dicomgen.ct_instance(study.study, generate_uid(), 1)]).status_code == 200
    after = tags(http, study, ["series metadata", "study metadata"])
    assert after["series metadata"] == before["series metadata"]
    assert after["study metadata"] != before["study metadata"]


def test_storing_the_same_bytes_again_changes_nothing(http: Client, study: Study) -> None:
    before = tags(http, study, GROUP + INSTANCE)
    same = dicomgen.ct_instance(study.study, study.series, 1, sop_uid=study.sops[0])
    assert stow(http, [same]).status_code == 200
    assert tags(http, study, GROUP + INSTANCE) == before


def test_a_replaced_instance_changes_every_tag_of_it(http: Client, study: Study) -> None:
    before = tags(http, study, GROUP + INSTANCE)
    other = dicomgen.ct_instance(study.study, study.series, 1, sop_uid=study.sops[0], seed=99)
    assert stow(http, [other]).status_code == 200
    after = tags(http, study, GROUP + INSTANCE)
    changed = {n for n in GROUP + INSTANCE if after[n] != before[n]}
    # Only the pixels differ: the instance's metadata text is the same, and so its tag.
    assert changed == set(GROUP + INSTANCE) - {"instance metadata"}


def test_reject_delete_and_restore_change_the_study_tags(http: Client, study: Study) -> None:
    seen = [tags(http, study, GROUP)]
    last = study.series_path + f"/instances/{study.sops[2]}"
    assert http.post(f"{last}/reject/113001%5EDCM").status_code == 204
    seen.append(tags(http, study, GROUP))
    restored = dicomgen.ct_instance(study.study, study.series, 3, sop_uid=study.sops[2])
    assert stow(http, [restored]).status_code == 200
    seen.append(tags(http, study, GROUP))
    assert http.delete(last).status_code == 204
    seen.append(tags(http, study, GROUP))
    for name in ("study metadata", "series metadata"):
        assert len({s[name] for s in seen}) == len(seen), name  # never an earlier tag again
    # The retrieve answer is named by the stored files it sends: after the
    # delete it sends what it sent after the reject, so its tag is that one.
    retrieve = [s["study"] for s in seen]
    assert retrieve[1] != retrieve[0] and retrieve[2] not in (retrieve[0], retrieve[1])
    assert retrieve[3] == retrieve[1]


def test_an_old_tag_gets_the_new_answer(http: Client, study: Study) -> None:
    path = f"{study.path}/metadata"
    old = get(http, path, "gzip").headers["ETag"]
    assert stow(http, [dicomgen.ct_instance(study.study, study.series, 8)]).status_code == 200
    response = get(http, path, "gzip", **{"If-None-Match": old})
    assert response.status_code == 200 and response.headers["ETag"] != old


# -- byte ranges -----------------------------------------------------------------


def test_a_single_part_frame_answers_ranges(http: Client, multiframe: Study) -> None:
    path = f"{multiframe.instance_path()}/frames/3"
    whole = get(http, path, None, "image/jp2")
    assert whole.status_code == 200 and whole.headers["Content-Type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    assert whole.content[:2] == b"\xff\x4f" and whole.headers["Accept-Ranges"] == "bytes"
    size = len(whole.content)
    head = get(http, path, None, "image/jp2", Range="bytes=0-99")
    assert head.status_code == 206 and head.content == whole.content[:100]
    assert head.headers["Content-Range"] == f"bytes 0-99/{size}"
    assert head.headers["ETag"] == whole.headers["ETag"]
    rest = get(http, path, None, "image/jp2", Range="bytes=100-")
    assert head.content + rest.content == whole.content
    assert get(http, path, None, "image/jp2", Range="bytes=-10").content == whole.content[-10:]


def test_multipart_frames_answer_ranges_that_fit_together(http: Client, multiframe: Study) -> None:
    """As Cornerstone3D's progressive loading reads them: the first bytes of
    the multipart answer, then the rest, joined (the boundary is stable)."""
    path = f"{multiframe.instance_path()}/frames/2"
    whole = get(http, path, None, OCTETS)
    first = get(http, path, None, OCTETS, Range="bytes=0-199")
    assert first.status_code == 206
    total = int(first.headers["Content-Range"].rsplit("/", 1)[1])
    assert total == len(whole.content)
    rest = get(http, path, None, OCTETS, Range=f"bytes={len(first.content)}-")
    assert first.headers["Content-Type"] == rest.headers["Content-Type"] == whole.headers["Content-Type"]
    joined = Response(whole.url, 200, whole.headers, first.content + rest.content)
    assert split_multipart(joined) == split_multipart(whole)


def test_a_computed_frame_answers_ranges_too(http: Client, study: Study) -> None:
    path = f"{study.instance_path()}/frames/1"
    accept = "multipart/related; type=image/dicom-rle"
    whole = get(http, path, None, accept)
    part = get(http, path, None, accept, Range="bytes=10-19")
    assert part.status_code == 206 and part.content == whole.content[10:20]


@pytest.mark.parametrize("header", ["bytes=0-1, 4-5", "bytes=a-b", "items=0-1"])
def test_several_or_malformed_ranges_get_the_whole_answer(http: Client, multiframe: Study, header: str) -> None:
    path = f"{multiframe.instance_path()}/frames/1"
    response = get(http, path, None, "image/jp2", Range=header)
    assert response.status_code == 200 and response.content == get(http, path, None, "image/jp2").content


def test_an_unsatisfiable_range_is_416(http: Client, multiframe: Study) -> None:
    path = f"{multiframe.instance_path()}/frames/1"
    size = len(get(http, path, None, "image/jp2").content)
    response = get(http, path, None, "image/jp2", Range=f"bytes={size}-")
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{size}"


def test_if_range_with_another_tag_gets_the_whole_answer(http: Client, multiframe: Study) -> None:
    path = f"{multiframe.instance_path()}/frames/1"
    tag = get(http, path, None, "image/jp2").headers["ETag"]
    assert get(http, path, None, "image/jp2", Range="bytes=0-9", **{"If-Range": tag}).status_code == 206
    assert get(http, path, None, "image/jp2", Range="bytes=0-9", **{"If-Range": '"old"'}).status_code == 200


def test_several_frames_with_bare_types_stay_multipart(http: Client, multiframe: Study) -> None:
    response = get(http, f"{multiframe.instance_path()}/frames/1,2", None, "image/jp2")
    assert response.headers["Content-Type"].startswith('multipart/related; type="image/jp2"')
    assert len(split_multipart(response)) == 2


def test_bulk_data_ranges(http: Client, study: Study) -> None:
    path = f"{study.instance_path()}/bulk/7FE00010"
    whole = get(http, path, None, "application/octet-stream").content
    single = get(http, path, None, "application/octet-stream", Range="bytes=2-5")
    assert single.status_code == 206 and single.content == whole[2:6]
    multi = get(http, path, None, None, Range="bytes=2-5")
    [(headers, body)] = split_multipart(multi)
    assert multi.status_code == 206 and body == whole[2:6]
    assert headers["content-range"] == f"bytes 2-5/{len(whole)}"


def test_if_none_match_parsing() -> None:
    assert validators.parse_tags(b'"a", W/"b" ,"c,d"') == [b'"a"', b'W/"b"', b'"c,d"']
    assert validators.parse_tags(b" * ") is None
    assert validators.parse_tags(b'"a", junk, "b"') == [b'"a"']
    assert validators.coded(b'"abc"', "gzip") == b'"abc-gzip"'
    assert validators.coded(b'"abc"', None) == b'"abc"'


@pytest.mark.parametrize("headers", [
    {"If-None-Match": "garbage"}, {"If-None-Match": '"unterminated'}, {"If-None-Match": ","},
    {"Range": "bytes=99999999999999999999999-"}, {"Range": "bytes=5-1"}, {"If-Range": "\x01"},
    {"Accept-Encoding": ";;;, q=1, gzip;q=, br;q=1.5"},
])
def test_odd_conditional_headers_never_cause_a_5xx(http: Client, multiframe: Study, headers: dict[str, str]) -> None:
    for path in (f"{multiframe.instance_path()}/frames/1", f"{multiframe.path}/metadata"):
        response = get(http, path, None, None, **headers)
        assert response.status_code in (200, 206, 416), (path, response.status_code, response.text)
