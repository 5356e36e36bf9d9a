"""The part splitter: a multipart body written into one file per part as it
arrives, and rebuilt byte for byte when it is not well-formed."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomweb.io.multipart import MultipartError, PartSplitter, iter_parts
from tests.httpclient import multipart_body


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path


def _feed(body: bytes, boundary: str, directory: Path, sizes: list[int], **kwargs: Any) -> PartSplitter:
    """Feed ``body`` in chunks of ``sizes`` (cycled), then the end."""
    splitter = PartSplitter(boundary, str(directory), **kwargs)
    pos = 0
    for size in _cycle(sizes):
        if pos >= len(body):
            break
        splitter.write(body[pos:pos + size])
        pos += size
    splitter.finish()
    return splitter


def _cycle(sizes: list[int]) -> Iterator[int]:
    while True:
        yield from sizes or [1 << 20]


def _reader(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]] | str:
    try:
        return [(p.headers, body[p.offset:p.offset + p.length]) for p in iter_parts(io.BytesIO(body), boundary)]
    except MultipartError as exc:
        return str(exc)


def _outcome(splitter: PartSplitter, boundary: str) -> list[tuple[dict[str, str], bytes]] | str:
    """What STOW would see: the split parts, or the reader over the rebuilt body."""
    if splitter.complete:
        return [(p.headers, Path(p.path).read_bytes()) for p in splitter.parts]
    whole = splitter.materialize(lambda: tempfile.TemporaryFile(dir=splitter.directory))
    with whole:
        return _reader(whole.read(), boundary)


@given(st.lists(st.binary(max_size=2000), min_size=1, max_size=4),
       st.lists(st.integers(min_value=1, max_value=300), max_size=8))
def test_a_body_in_chunks_of_any_size_splits_into_exactly_the_parts_written(
        payloads: list[bytes], sizes: list[int]) -> None:
    body, boundary = multipart_body(payloads)
    with tempfile.TemporaryDirectory() as directory:
        splitter = _feed(body, boundary, Path(directory), sizes)
        assert splitter.complete
        assert [Path(p.path).read_bytes() for p in splitter.parts] == payloads
        assert [p.length for p in splitter.parts] == [len(p) for p in payloads]
        assert all(p.content_type == "application/dicom" for p in splitter.parts)
        splitter.close()
        assert os.listdir(directory) == []


def test_a_delimiter_split_across_chunks_and_lookalikes_in_the_data_are_handled(spool: Path) -> None:
    boundary = "almost-a-boundary-but-not"
    payloads = [b"x" * 100, b"\r\n--almost-a-boundary\r\n" * 3, b"", b"\r\n--almost-a-boundary-but-no"]
    body, _ = multipart_body(payloads, boundary=boundary)
    for size in (1, 2, 3, 7, 29, 30, 31, 64):
        splitter = _feed(body, boundary, spool, [size])
        assert [Path(p.path).read_bytes() for p in splitter.parts] == payloads, size
        splitter.close()


def test_a_preamble_padding_and_an_epilogue_are_accepted(spool: Path) -> None:
    body = b"preamble text\r\n--b \t\r\nContent-Type: application/dicom\r\n\r\nDATA\r\n--b--\r\nepilogue"
    splitter = _feed(body, "b", spool, [5])
    assert _outcome(splitter, "b") == [({"content-type": "application/dicom"}, b"DATA")]


@pytest.mark.parametrize("body", [
    b"no delimiter here",
    b"--b\r\nContent-Type: x\r\n\r\nDATA",  # truncated in a part
    b"--b\r\nContent-Type: x\r\n\r\nDATA\r\n--b",  # truncated after a delimiter
    b"--b\r\nContent-Type: x",  # unterminated headers
    b"--b\r\nbad header line\r\n\r\nDATA\r\n--b--",
    b"x--b\r\n\r\nDATA\r\n--b--",  # delimiter not at a line start
    b"--b junk\r\n\r\nDATA\r\n--b--",  # not padding after the delimiter
    b"--b\r\n" + b"X-Long: " + b"a" * 20000 + b"\r\n\r\nDATA\r\n--b--",
    b"--b\r\n\r\nONE\r\n--b\r\n\r\nTWO\r\n--b\r\n\r\nTHREE\r\n--b--",  # over the part limit below
])
@pytest.mark.parametrize("size", [1, 4, 1 << 20])
def test_a_body_the_splitter_gives_up_on_is_rebuilt_for_the_reader(spool: Path, body: bytes, size: int) -> None:
    splitter = _feed(body, "b", spool, [size], max_parts=2)
    assert not splitter.complete
    whole = splitter.materialize(lambda: tempfile.TemporaryFile(dir=spool))
    with whole:
        assert whole.read() == body
    splitter.close()
    assert os.listdir(spool) == []


@given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=40), max_size=5))
def test_whatever_the_body_stow_sees_what_the_reader_alone_would_say(noise: bytes, sizes: list[int]) -> None:
    body, boundary = multipart_body([noise, b"DATA"], boundary="bb")
    for mangled in (body, noise + body, body[:len(body) // 2], body.replace(b"\r\n\r\n", b"\r\n" + noise, 1)):
        with tempfile.TemporaryDirectory() as directory:
            splitter = _feed(mangled, boundary, Path(directory), sizes)
            assert _outcome(splitter, boundary) == _reader(mangled, boundary)
            splitter.close()
            assert os.listdir(directory) == []


def test_closing_removes_every_part_file_also_mid_part(spool: Path) -> None:
    body, boundary = multipart_body([b"a" * 1000, b"b" * 1000])
    splitter = PartSplitter(boundary, str(spool))
    splitter.write(body[:1500])  # the first part done, the second begun
    assert len(os.listdir(spool)) == 2
    splitter.close()
    assert os.listdir(spool) == []
    splitter.write(body[1500:])  # the rest of a body whose request was refused is dropped
    splitter.close()
    assert os.listdir(spool) == []


def test_closing_waits_while_the_parts_are_held(spool: Path) -> None:
    body, boundary = multipart_body([b"a" * 10])
    splitter = _feed(body, boundary, spool, [])
    splitter.hold()
    splitter.close()  # e.g. the client went away while STOW stores the parts
    assert os.listdir(spool) != []
    splitter.release()
    assert os.listdir(spool) == []


def test_a_part_moved_away_is_not_missed_on_close(spool: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    body, boundary = multipart_body([b"a" * 10, b"b" * 10])
    splitter = _feed(body, boundary, spool, [])
    kept = tmp_path_factory.mktemp("store") / "kept"
    os.rename(splitter.parts[0].path, kept)  # what the store does with a stored part
    splitter.close()
    assert os.listdir(spool) == []
    assert kept.read_bytes() == b"a" * 10


def _counted(payloads: list[bytes], lengths: list[int | str] | None = None, boundary: str = "bb") -> bytes:
    """A body whose parts carry their own Content-Length (``lengths`` may lie)."""
    out = b""
    for i, payload in enumerate(payloads):
        length = len(payload) if lengths is None else lengths[i]
        out += (b"\r\n" if i else b"") + f"--{boundary}\r\nContent-Type: application/dicom\r\n".encode()
        out += f"Content-Length: {length}\r\n\r\n".encode() + payload
    return out + f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("size", [1, 2, 5, 31, 1 << 20])
def test_a_part_with_its_own_content_length_keeps_a_delimiter_look_alike_inside(spool: Path, size: int) -> None:
    payloads = [b"head\r\n--bb\r\nfake headers\r\n\r\ntail", b"", b"\r\n--bb--\r\n"]
    body = _counted(payloads)
    assert _reader(body, "bb") == [({"content-type": "application/dicom", "content-length": str(len(p))}, p)
                                   for p in payloads]
    splitter = _feed(body, "bb", spool, [size])
    assert splitter.complete
    assert _outcome(splitter, "bb") == _reader(body, "bb")
    splitter.close()


@pytest.mark.parametrize(("lengths", "reason"), [
    ([3, 4], "does not end at a boundary delimiter"),  # too short
    ([9, 4], "does not end at a boundary delimiter"),  # too long
    ([400, 4], "does not end at a boundary delimiter"),  # beyond the body
    (["4x", 4], "is not a number"),
])
@pytest.mark.parametrize("size", [1, 3, 1 << 20])
def test_a_content_length_that_contradicts_the_body_is_an_error(spool: Path, lengths: list[int | str], reason: str,
                                                                size: int) -> None:
    body = _counted([b"DATA", b"MORE"], lengths)
    splitter = _feed(body, "bb", spool, [size])
    assert not splitter.complete
    outcome = _outcome(splitter, "bb")
    assert isinstance(outcome, str) and reason in outcome
    splitter.close()
    assert os.listdir(spool) == []


@given(st.lists(st.binary(max_size=200), min_size=1, max_size=3),
       st.lists(st.integers(min_value=1, max_value=40), max_size=5), st.integers(min_value=-3, max_value=3))
def test_counted_parts_split_as_the_reader_reads_them_whatever_the_chunks(payloads: list[bytes], sizes: list[int],
                                                                         error: int) -> None:
    lengths: list[int | str] = [max(0, len(p) + (error if i == 0 else 0)) for i, p in enumerate(payloads)]
    body = _counted(payloads, lengths)
    with tempfile.TemporaryDirectory() as directory:
        splitter = _feed(body, "bb", Path(directory), sizes)
        assert _outcome(splitter, "bb") == _reader(body, "bb")
        splitter.close()
