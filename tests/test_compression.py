"""Compressed JSON and XML answers (README "Compression and caching"), in
this process (tests/inprocess.py): what Accept-Encoding gets, what is never
compressed, and the cache of compressed study and series metadata.

Requests here are ``raw``: exactly the headers given, the body as it came."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import brotli
import pytest
from pydicom.uid import generate_uid
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred

from dicomweb.web import compression
from dicomweb.web.metrics import Metrics
from tests import dicomgen
from tests.httpclient import multipart_body, stow
from tests.inprocess import Client, InProcessServer, Response

OCTETS = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@dataclass(frozen=True)
class Study:
    study: str
    series: str
    sops: list[str]

    @property
    def path(self) -> str:
        return f"/studies/{self.study}"

    @property
    def series_path(self) -> str:
        return f"{self.path}/series/{self.series}"

    def instance_path(self, n: int = 0) -> str:
        return f"{self.series_path}/instances/{self.sops[n]}"


@pytest.fixture
def server(tmp_path: os.PathLike[str]) -> Iterator[InProcessServer]:
    with InProcessServer(os.path.join(tmp_path, "data")) as inproc:
        yield inproc


@pytest.fixture
def study(server: InProcessServer) -> Study:
    """A five-instance CT series: its metadata is some kilobytes of JSON."""
    study, series = generate_uid(), generate_uid()
    sops = [str(generate_uid()) for _ in range(5)]
    parts = [dicomgen.ct_instance(study, series, n + 1, sop_uid=sop) for n, sop in enumerate(sops)]
    assert stow(server.client, parts).status_code == 200
    return Study(study, series, sops)


def get(http: Client, path: str, encoding: str | None, accept: str | None = None, **headers: str) -> Response:
    sent = dict(headers)
    if encoding is not None:
        sent["Accept-Encoding"] = encoding
    if accept is not None:
        sent["Accept"] = accept
    return http.get(path, headers=sent, raw=True)


def decoded(response: Response) -> bytes:
    coding = response.headers.get("Content-Encoding")
    if coding == "gzip":
        return gzip.decompress(response.content)
    if coding == "br":
        out: bytes = brotli.decompress(response.content)
        return out
    assert coding is None, coding
    return response.content


def varies_on_encoding(response: Response) -> bool:
    return "accept-encoding" in [v.strip().lower() for v in response.headers.get("Vary", "").split(",")]


@pytest.mark.parametrize(("accept_encoding", "coding"), [
    ("gzip", "gzip"),
    ("x-gzip", "gzip"),
    ("br", "br"),
    ("gzip, deflate, br", "br"),  # brotli is smaller at the same cost
    ("br;q=0.5, gzip", "gzip"),
    ("GZIP;Q=1", "gzip"),
    ("*", "br"),
    ("identity;q=0, gzip", "gzip"),
])
def test_json_answers_are_compressed_as_accept_encoding_allows(server: InProcessServer, study: Study,
                                                               accept_encoding: str, coding: str) -> None:
    plain = get(server.client, f"{study.path}/metadata", None)
    response = get(server.client, f"{study.path}/metadata", accept_encoding)
    assert response.status_code == 200
    assert response.headers["Content-Encoding"] == coding
    assert len(response.content) < len(plain.content) / 3
    assert decoded(response) == plain.content
    assert varies_on_encoding(response)


@pytest.mark.parametrize("accept_encoding", [None, "", "identity", "gzip;q=0", "br;q=0, gzip;q=0", "deflate",
                                             "gzip;q=0.5, identity", "compress, zstd"])
def test_compression_is_refused_without_an_acceptable_coding(server: InProcessServer, study: Study,
                                                              accept_encoding: str | None) -> None:
    response = get(server.client, f"{study.path}/metadata", accept_encoding)
    assert response.status_code == 200
    assert "Content-Encoding" not in response.headers
    assert response.json()[0]["0020000D"]["Value"] == [study.study]
    assert varies_on_encoding(response)


@pytest.mark.parametrize("accept_encoding", ["identity;q=0", "*;q=0", "gzip;q=0, identity;q=0"])
def test_refusing_identity_and_every_coding_we_have_is_406(server: InProcessServer, study: Study,
                                                           accept_encoding: str) -> None:
    response = get(server.client, f"{study.path}/metadata", accept_encoding)
    assert response.status_code == 406
    assert "Accept-Encoding" in response.text


def test_small_bodies_go_out_plain_unless_plain_is_refused(server: InProcessServer) -> None:
    empty = f"/studies?StudyInstanceUID={generate_uid()}"
    response = get(server.client, empty, "gzip, br")
    assert response.status_code == 200 and response.content == b"[]"
    assert "Content-Encoding" not in response.headers and varies_on_encoding(response)
    forced = get(server.client, empty, "gzip, identity;q=0")
    assert forced.headers["Content-Encoding"] == "gzip" and gzip.decompress(forced.content) == b"[]"


def test_qido_capabilities_and_metrics_are_compressed(server: InProcessServer, study: Study) -> None:
    http = server.client
    for path in ("/instances", f"{study.path}/instances", f"{study.series_path}/instances?includefield=all"):
        response = get(http, path, "gzip")
        assert response.headers.get("Content-Encoding") == "gzip", path
        assert decoded(response) == get(http, path, None).content
    assert get(http, "/metrics", "gzip").headers["Content-Encoding"] == "gzip"
    options = http.request("OPTIONS", "/studies", headers={"Accept-Encoding": "br"}, raw=True)
    assert options.headers["Content-Encoding"] == "br" and b"<application" in decoded(options)


def stow_raw(http: Client, parts: list[bytes], accept_encoding: str) -> Response:
    body, boundary = multipart_body(parts)
    return http.post("/studies", data=body, raw=True, headers={
        "Content-Type": f"multipart/related; type=application/dicom; boundary={boundary}",
        "Accept": "application/dicom+json", "Accept-Encoding": accept_encoding})


def test_the_stow_response_is_compressed_and_a_406_comes_before_storing(server: InProcessServer) -> None:
    study = generate_uid()
    parts = [dicomgen.ct_instance(study, generate_uid(), n) for n in range(1, 30)]
    refused = stow_raw(server.client, parts, "*;q=0")
    assert refused.status_code == 406
    assert get(server.client, f"/studies?StudyInstanceUID={study}", None).content == b"[]"
    stored = stow_raw(server.client, parts, "gzip")
    assert stored.status_code == 200 and stored.headers["Content-Encoding"] == "gzip"
    assert b'"00081199"' in gzip.decompress(stored.content)


@pytest.mark.parametrize(("suffix", "accept"), [
    ("", "multipart/related; type=application/dicom; transfer-syntax=*"),
    ("/frames/1", OCTETS),
    ("/frames/1", "application/octet-stream"),
    ("/bulk/7FE00010", "application/octet-stream"),
    ("/rendered", "image/png"),
])
def test_pixel_data_and_part10_are_never_compressed(server: InProcessServer, study: Study, suffix: str,
                                                    accept: str) -> None:
    response = get(server.client, study.instance_path() + suffix, "gzip, br, *", accept)
    assert response.status_code == 200
    assert "Content-Encoding" not in response.headers
    assert not varies_on_encoding(response)


def test_xml_metadata_is_compressed_too(server: InProcessServer, study: Study) -> None:
    accept = 'multipart/related; type="application/dicom+xml"'
    plain = get(server.client, f"{study.series_path}/metadata", None, accept)
    coded = get(server.client, f"{study.series_path}/metadata", "gzip", accept)
    assert coded.headers["Content-Encoding"] == "gzip"
    assert coded.headers["Content-Type"] == plain.headers["Content-Type"]  # the boundary is the version's
    assert gzip.decompress(coded.content) == plain.content


def cache_lookups(server: InProcessServer, result: str) -> float:
    value = server.metrics.registry.get_sample_value("dicomweb_metadata_cache_lookups_total", {"result": result})
    return value or 0.0


def test_a_second_metadata_request_is_served_from_the_compressed_cache(server: InProcessServer,
                                                                      study: Study) -> None:
    for path in (f"{study.path}/metadata", f"{study.series_path}/metadata"):
        for coding in ("gzip", "br"):
            hits, misses = cache_lookups(server, "hit"), cache_lookups(server, "miss")
            first = get(server.client, path, coding)
            assert (cache_lookups(server, "hit"), cache_lookups(server, "miss")) == (hits, misses + 1)
            second = get(server.client, path, coding)
            assert cache_lookups(server, "hit") == hits + 1
            assert second.content == first.content and second.headers["ETag"] == first.headers["ETag"]
            assert second.headers["Content-Encoding"] == coding
    kept = server.metrics.registry.get_sample_value("dicomweb_metadata_cache_bytes")
    assert kept is not None and kept > 0


def test_a_new_instance_is_never_answered_from_the_cache(server: InProcessServer, study: Study) -> None:
    path = f"{study.path}/metadata"
    before = get(server.client, path, "gzip")
    assert stow(server.client, [dicomgen.ct_instance(study.study, study.series, 9)]).status_code == 200
    after = get(server.client, path, "gzip")
    assert len(json.loads(gzip.decompress(after.content))) == 6
    assert after.headers["ETag"] != before.headers["ETag"]


def test_no_compression_option(tmp_path: os.PathLike[str]) -> None:
    with InProcessServer(os.path.join(tmp_path, "data"), "--no-compression") as server:
        study = generate_uid()
        stow(server.client, [dicomgen.ct_instance(study, generate_uid(), n) for n in range(1, 6)])
        response = get(server.client, f"/studies/{study}/metadata", "gzip, br")
        assert response.status_code == 200 and "Content-Encoding" not in response.headers
        assert not varies_on_encoding(response)
        assert get(server.client, f"/studies/{study}/metadata", "identity;q=0, gzip").status_code == 406


def test_accept_encoding_parsing() -> None:
    parse = compression.parse_accept_encoding
    assert parse("gzip;q=0.8, BR, *;q=0") == {"gzip": 0.8, "br": 1.0, "*": 0.0}
    assert parse("gzip;q=2, br;q=x, ,identity") == {"identity": 1.0}  # out of range or malformed: ignored
    negotiate = compression.negotiate
    assert negotiate(None) == compression.IDENTITY
    assert negotiate(b"gzip", ("gzip",)).name == "gzip"
    assert negotiate(b"*;q=0", ("gzip",)) == compression.Coding(None, identity_ok=False)
    assert negotiate(b"*;q=0, identity", ("gzip",)) == compression.IDENTITY


class TestConcurrentMakers:
    """Requests for a body another request is making wait for it (the cache
    alone, driven by hand: the in-process server runs one request at a time)."""

    @staticmethod
    def lookups(metrics: Metrics) -> dict[str, float]:
        return {r: metrics.registry.get_sample_value("dicomweb_metadata_cache_lookups_total", {"result": r}) or 0.0
                for r in ("hit", "shared", "miss")}

    def test_a_body_being_made_is_made_once(self) -> None:
        metrics = Metrics()
        cache = compression.BodyCache(1 << 20, metrics)
        release: Deferred[None] = Deferred()
        calls = []

        async def make() -> compression.Made:
            calls.append(1)
            await release
            return b"coded", True

        first, second = (ensureDeferred(cache.get_or_make(b"k", make)) for _ in range(2))
        release.callback(None)
        assert self.successes(first, second) == [(b"coded", True)] * 2
        assert calls == [1]
        assert self.successes(ensureDeferred(cache.get_or_make(b"k", make))) == [(b"coded", True)]
        assert self.lookups(metrics) == {"hit": 1, "shared": 1, "miss": 1}

    def test_when_the_maker_fails_a_waiter_makes_it_itself(self) -> None:
        cache = compression.BodyCache(1 << 20)
        release: Deferred[None] = Deferred()

        async def failing() -> compression.Made:
            await release
            raise RuntimeError("the store went away")

        async def working() -> compression.Made:
            return b"plain", False

        first = ensureDeferred(cache.get_or_make(b"k", failing))
        second = ensureDeferred(cache.get_or_make(b"k", working))
        gone = ensureDeferred(cache.get_or_make(b"k", working))
        gone.cancel()  # its client went away while it waited
        gone.addErrback(lambda f: f.trap(CancelledError))
        release.callback(None)
        first.addErrback(lambda f: f.trap(RuntimeError))
        assert self.successes(second) == [(b"plain", False)]
        assert len(cache) == 0  # a plain body is not kept

    @staticmethod
    def successes(*deferreds: Deferred[compression.Made]) -> list[compression.Made]:
        out: list[compression.Made] = []
        for d in deferreds:
            d.addCallback(out.append)
        return out
