"""Bounded, seeded fuzzing of the ingest path, the multipart splitter and the
QIDO parameter parser (see tests/fuzzing.py for the budget and seed knobs).

Invariant for STOW: every mutant is either refused with a reason (and absent),
or acknowledged and then served back byte-identical, with its metadata and
every frame; never a 5xx.
"""

from __future__ import annotations

import glob
import io
import logging
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from dicomweb.dicom import analyze as az
from dicomweb.io.multipart import MultipartError, PartSplitter, iter_parts
from dicomweb.web.errors import HTTPError
from dicomweb.web.qido import parse as qido_parse
from tests import fuzzing
from tests.httpclient import failed, json_of, referenced, split_multipart, stow

FAILURES = {az.PROCESSING_FAILURE, az.CANNOT_UNDERSTAND, az.TRANSFER_SYNTAX_NOT_SUPPORTED,
            az.SOP_CLASS_NOT_SUPPORTED, az.DATASET_DOES_NOT_MATCH}


@pytest.fixture(scope="module")
def pool() -> list[bytes]:
    return fuzzing.seeds()


def check_analysis(data: bytes) -> az.InstanceInfo | None:
    """analyze() refuses with a reason, or gives ranges inside the object."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            info = az.analyze(io.BytesIO(data), 0, len(data))
        except az.InvalidInstance as exc:
            assert exc.reason and exc.failure in FAILURES
            return None
        finally:
            logging.disable(logging.NOTSET)
    for where, (offset, length) in info.bulk.items():
        assert 0 <= offset and offset + length <= len(data), where
    for frame in info.frames or []:
        for offset, length in frame:
            assert 0 <= offset and offset + length <= len(data)
    if info.frames is not None and not info.encapsulated:
        frames = int(info.instance.get("00280008", {}).get("Value", [1])[0] or 1)
        assert len(info.frames) == max(1, frames)
    return info


@pytest.mark.parametrize("path", sorted(glob.glob(f"{fuzzing.CASES_DIR}/*.dcm")) or [None])
def test_kept_fuzz_cases(path: str | None) -> None:
    if path is None:
        pytest.skip("no kept fuzz cases")
    with open(path, "rb") as f:
        check_analysis(f.read())


def test_analysis_fuzz(pool: list[bytes]) -> None:
    rng = random.Random(fuzzing.seed())
    refused = 0
    for _ in range(fuzzing.iterations(600)):
        data = fuzzing.mutate(rng, pool)
        try:
            if check_analysis(data) is None:
                refused += 1
        except BaseException:
            path = fuzzing.keep(data, "analysis")
            raise AssertionError(f"invariant broken; input kept as {path}") from None
    assert refused  # the mutations do reach the validation


def _served_back(url: str, data: bytes, info: az.InstanceInfo) -> None:
    base = f"{url}/studies/{info.study_uid}/series/{info.series_uid}/instances/{info.sop_uid}"
    whole = requests.get(base, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert whole.status_code == 200
    assert split_multipart(whole)[0][1] == data
    assert requests.get(base + "/metadata", headers={"Accept": "application/dicom+json"}).status_code == 200
    for number in range(1, len(info.frames or []) + 1):
        frame = requests.get(f"{base}/frames/{number}",
                             headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
        assert frame.status_code == 200, (number, frame.text)


def test_stow_fuzz_round_trips(url: str, pool: list[bytes]) -> None:
    """A few mutants over HTTP, each with fresh UIDs, in one request."""
    rng = random.Random(fuzzing.seed() + 1)
    seeds = pool[:7]
    # Each mutant from a copy with UIDs of its own, so that two mutants never
    # claim one SOP Instance UID (the second would be a duplicate).
    mutants = [fuzzing.mutate(rng, [fuzzing.fresh_uids(rng.choice(seeds))])
               for _ in range(fuzzing.iterations(600) // 50 or 1)]
    mutants += [fuzzing.fresh_uids(d) for d in seeds[:2]]
    response = stow(url, mutants)
    assert response.status_code < 500, response.text
    body: dict[str, Any] = json_of(response)
    acknowledged = set(referenced(body))
    assert len(acknowledged) + len(failed(body)) >= 1
    infos = [(data, check_analysis(data)) for data in mutants]
    claimed = [info.sop_uid for _data, info in infos if info is not None]
    for data, info in infos:
        if info is None:
            continue
        if info.sop_uid in acknowledged and claimed.count(info.sop_uid) == 1:
            _served_back(url, data, info)
        elif info.sop_uid not in acknowledged:
            raise AssertionError(f"a valid mutant was not stored: {fuzzing.keep(data, 'stow')}")


# -- the multipart splitter: look-alike delimiters, random chunking ----------------------


def _reader(body: bytes, boundary: str) -> Any:
    try:
        return [(p.headers, body[p.offset:p.offset + p.length]) for p in iter_parts(io.BytesIO(body), boundary)]
    except MultipartError as exc:
        return str(exc)


_LOOKALIKES = [b"\r\n--", b"--B", b"\r\n--B", b"\r\n--BOUNDAR", b"\r\n--BOUNDARYX", b"--BOUNDARY", b"\n--BOUNDARY\r\n"]


@given(st.lists(st.lists(st.sampled_from([*_LOOKALIKES, b"data", b"\r\n", b"-"]), max_size=12), min_size=1, max_size=3),
       st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6))
def test_splitter_fuzz_lookalike_delimiters(tmp_path_factory: pytest.TempPathFactory, pieces: list[list[bytes]],
                                            sizes: list[int]) -> None:
    boundary = "BOUNDARY"
    parts = [b"".join(p) for p in pieces]
    body = b"".join(b"--BOUNDARY\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts)
    body += b"--BOUNDARY--"
    directory = tmp_path_factory.mktemp("split")
    splitter = PartSplitter(boundary, str(directory))
    pos, turn = 0, 0
    while pos < len(body):
        size = sizes[turn % len(sizes)]
        splitter.write(body[pos:pos + size])
        pos, turn = pos + size, turn + 1
    splitter.finish()
    try:
        if splitter.complete:
            outcome: Any = [(p.headers, Path(p.path).read_bytes()) for p in splitter.parts]
        else:
            with splitter.materialize(lambda: tempfile.TemporaryFile(dir=splitter.directory)) as whole:
                outcome = _reader(whole.read(), boundary)
    finally:
        splitter.close()
    assert outcome == _reader(body, boundary)
    if not any(b"\r\n--BOUNDARY" in p for p in parts):
        assert [b for _h, b in outcome] == parts


# -- QIDO parameters: 200 or 400, never anything else -------------------------------------

_KEYS = ["PatientName", "00100020", "StudyDate", "StudyInstanceUID", "includefield", "limit", "offset",
         "fuzzymatching", "ModalitiesInStudy", "Modality", "SOPClassUID", "0020000D", "bogus", "00080020", "",
         "StudyTime", "AccessionNumber", "ffffffff", "%", "PatientBirthDate"]
_VALUES = st.text(alphabet=st.sampled_from(list("0123456789-*?\\,.^=%+ /aZé\x00&#")), max_size=20)


def _uri(pairs: list[tuple[str, str]]) -> bytes:
    from urllib.parse import quote

    return ("/studies?" + "&".join(f"{quote(k)}={quote(v)}" if i % 2 else f"{k}={v}"
                                   for i, (k, v) in enumerate(pairs))).encode("utf-8")


@given(st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), max_size=6))
def test_qido_parameter_fuzz(pairs: list[tuple[str, str]]) -> None:
    for level in ("study", "series", "instance"):
        try:
            qido_parse(_uri(pairs), level)
        except HTTPError as exc:
            assert exc.status == 400


def test_qido_parameter_fuzz_over_http(url: str) -> None:
    rng = random.Random(fuzzing.seed())
    for _ in range(20):
        pairs = [(rng.choice(_KEYS), "".join(rng.choice("09-*?\\,.^%+aé&#") for _ in range(rng.randrange(8))))
                 for _ in range(rng.randrange(4))]
        response = requests.get(url.encode() .decode() + _uri(pairs).decode(), headers={"Accept": "application/dicom+json"})
        assert response.status_code in (200, 204, 400), (pairs, response.status_code, response.text[:200])
