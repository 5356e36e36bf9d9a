"""HTTP/2 over TLS: the real server on an ``ssl:`` port, real HTTP/2 clients.

httpx (with its ``h2`` extra) is the everyday client; the flow-control and
stream-reset tests drive the ``h2`` state machine over a TLS socket by hand,
because they need what a library hides: a client that withholds
WINDOW_UPDATE, and one that resets a single stream.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import psutil
import pytest
import requests
from pydicom.uid import generate_uid

import tests.conftest
from tests import dicomgen
from tests.httpclient import failed, json_of, multipart_body, referenced, split_multipart
from tests.security_fixtures import (
    WRITER,
    WRITER_PASSWORD,
    TlsFiles,
    write_tls_files,
    write_users_file,
)
from tests.server import ServerProcess

DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OCTETS = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
GONE = "the client went away"
#: STOW bodies above this get 413 (the servers here are started with it).
MAX_BODY = 24 << 20


@pytest.fixture(name="tls_files", scope="module")
def tls_files_fixture(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return write_tls_files(tmp_path_factory.mktemp("h2-tls"))


def _tls_port(tls: TlsFiles) -> str:
    return f"ssl:0:interface=127.0.0.1:privateKey={tls.key}:certKey={tls.cert}"


def _start(base: Path, tls: TlsFiles, *extra: str) -> ServerProcess:
    proc = ServerProcess(str(base / "data"), str(base / "server.log"), "--port", _tls_port(tls),
                         "--max-request-size", str(MAX_BODY), *extra)
    proc.scheme, proc.verify = "https", tls.ca
    return proc.start()


def _stop(proc: ServerProcess) -> None:
    proc.stop()
    log = proc.log()
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture(name="h2_server", scope="module", params=tests.conftest.STORES)
def h2_server_fixture(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                      tls_files: TlsFiles) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp(f"h2-{request.param}")
    proc = _start(base, tls_files, *tests.conftest.store_args(request, request.param))
    yield proc
    _stop(proc)


@pytest.fixture(name="embedded_h2", scope="module")
def embedded_h2_fixture(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[ServerProcess]:
    """One store is enough for protocol-only behaviour."""
    proc = _start(tmp_path_factory.mktemp("h2-protocol"), tls_files)
    yield proc
    _stop(proc)


@pytest.fixture(name="client")
def client_fixture(h2_server: ServerProcess, tls_files: TlsFiles) -> Iterator[httpx.Client]:
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=tls_files.ca),
                      base_url=h2_server.url, timeout=120) as client:
        yield client


def _h2_client(server: ServerProcess, tls: TlsFiles, **kwargs: Any) -> httpx.Client:
    return httpx.Client(http2=True, verify=ssl.create_default_context(cafile=tls.ca), base_url=server.url,
                        timeout=60, **kwargs)


def _stow(client: httpx.Client, parts: list[bytes], **headers: str) -> httpx.Response:
    body, boundary = multipart_body(parts)
    return client.post("/studies", content=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json", **headers})


def _stored_series(client: httpx.Client, count: int, size: int = 64) -> tuple[str, str, list[bytes]]:
    study, series = generate_uid(), generate_uid()
    instances = list(dicomgen.ct_series(count, study_uid=study, series_uid=series, size=size))
    response = _stow(client, instances)
    assert response.status_code == 200, response.text
    assert response.http_version == "HTTP/2"
    return study, series, instances


# -- negotiation ----------------------------------------------------------------

def test_a_tls_client_offering_h2_gets_http2(client: httpx.Client) -> None:
    response = client.get("/studies", params={"limit": "1"})
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"


def test_an_http11_only_client_still_works_on_the_same_port(embedded_h2: ServerProcess,
                                                             tls_files: TlsFiles) -> None:
    with httpx.Client(verify=ssl.create_default_context(cafile=tls_files.ca), base_url=embedded_h2.url) as client:
        response = client.get("/studies")
    assert (response.status_code, response.http_version) == (200, "HTTP/1.1")
    assert requests.get(embedded_h2.url + "/studies", verify=tls_files.ca, timeout=30).status_code == 200


def test_the_access_log_names_the_protocol(embedded_h2: ServerProcess, tls_files: TlsFiles) -> None:
    with _h2_client(embedded_h2, tls_files) as client:
        assert client.get("/studies", params={"PatientName": "Secret^Name"}).status_code == 200
    requests.get(embedded_h2.url + "/studies", verify=tls_files.ca, timeout=30)
    log = embedded_h2.log()
    assert '"GET /studies HTTP/2"' in log
    assert '"GET /studies HTTP/1.1"' in log
    assert "Secret" not in log  # the query string stays out, as over HTTP/1.1


def test_no_http2_offers_http11_only(tmp_path: Path, tls_files: TlsFiles) -> None:
    proc = _start(tmp_path, tls_files, "--no-http2")
    try:
        with _h2_client(proc, tls_files) as client:
            response = client.get("/studies")
        assert (response.status_code, response.http_version) == (200, "HTTP/1.1")
    finally:
        _stop(proc)


# -- retrieve, STOW, QIDO on both stores ---------------------------------------------

def test_retrieve_instance_series_frames_metadata_and_bulk_data(client: httpx.Client) -> None:
    study, series, instances = _stored_series(client, 3)
    sop = json_of(client.get(f"/studies/{study}/series/{series}/instances"))[0]["00080018"]["Value"][0]
    one = client.get(f"/studies/{study}/series/{series}/instances/{sop}", headers={"Accept": DICOM})
    assert (one.status_code, one.http_version) == (200, "HTTP/2")
    assert len(split_multipart(one)) == 1
    whole = client.get(f"/studies/{study}/series/{series}", headers={"Accept": DICOM})
    assert sorted(body for _, body in split_multipart(whole)) == sorted(instances)
    frame = client.get(f"/studies/{study}/series/{series}/instances/{sop}/frames/1", headers={"Accept": OCTETS})
    [(headers, pixels)] = split_multipart(frame)
    assert "transfer-syntax=" in headers["content-type"].lower() and len(pixels) == 64 * 64 * 2
    metadata = json_of(client.get(f"/studies/{study}/series/{series}/metadata"))
    assert len(metadata) == 3
    uri = metadata[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith(client.base_url.scheme + "://")  # the stream knows it is over TLS
    bulk = client.get(uri, headers={"Accept": OCTETS})
    assert bulk.status_code == 200 and len(split_multipart(bulk)[0][1]) == 64 * 64 * 2


def test_a_large_multipart_stow_is_received_whole(client: httpx.Client) -> None:
    study, _, instances = _stored_series(client, 30, size=512)  # ~16 MB body
    assert sum(len(i) for i in instances) > 15 << 20
    found = json_of(client.get("/studies", params={"StudyInstanceUID": study}))
    assert found[0]["00201208"]["Value"] == [30]
    whole = client.get(f"/studies/{study}", headers={"Accept": DICOM})
    assert sorted(body for _, body in split_multipart(whole)) == sorted(instances)


def test_a_stow_body_over_the_size_limit_is_413_and_the_connection_goes_on(
        embedded_h2: ServerProcess, tls_files: TlsFiles) -> None:
    with _h2_client(embedded_h2, tls_files) as client:
        big = list(dicomgen.ct_series(48, size=512))  # ~25 MB, over MAX_BODY
        response = _stow(client, big)
        assert (response.status_code, response.http_version) == (413, "HTTP/2")
        assert client.get("/studies").status_code == 200


def test_bad_stow_bodies_are_4xx(client: httpx.Client) -> None:
    no_boundary = client.post("/studies", content=b"--x\r\n\r\nhello\r\n--x--\r\n",
                              headers={"Content-Type": 'multipart/related; type="application/dicom"'})
    assert 400 <= no_boundary.status_code < 500, no_boundary.text
    not_dicom = _stow(client, [b"this is not a DICOM file" * 10])
    assert 400 <= not_dicom.status_code < 500, not_dicom.text
    assert failed(json_of(not_dicom)) and not referenced(json_of(not_dicom))


def test_qido_pages_over_http2(client: httpx.Client) -> None:
    study, _, _ = _stored_series(client, 5)
    seen = []
    for offset in (0, 2, 4):
        page = client.get(f"/studies/{study}/instances", params={"limit": "2", "offset": str(offset)})
        assert page.status_code == 200 and page.http_version == "HTTP/2"
        seen += [item["00080018"]["Value"][0] for item in json_of(page)]
    assert len(seen) == len(set(seen)) == 5


# -- protocol behaviour on one store ----------------------------------------------

def test_compression_and_entity_tags_over_http2(embedded_h2: ServerProcess, tls_files: TlsFiles) -> None:
    with _h2_client(embedded_h2, tls_files) as client:
        study, series, _ = _stored_series(client, 3)
        path = f"/studies/{study}/series/{series}/metadata"
        first = client.get(path, headers={"Accept-Encoding": "gzip"})
        again = client.get(path, headers={"Accept-Encoding": "gzip", "If-None-Match": first.headers["etag"]})
    assert (first.status_code, first.http_version, first.headers["content-encoding"]) == (200, "HTTP/2", "gzip")
    assert len(json_of(first)) == 3  # httpx has decoded it
    assert again.status_code == 304 and not again.content

def test_errors_are_the_same_over_http2(embedded_h2: ServerProcess, tls_files: TlsFiles) -> None:
    with _h2_client(embedded_h2, tls_files) as client:
        missing = client.get(f"/studies/{generate_uid()}", headers={"Accept": DICOM})
        bad_accept = client.get("/studies", headers={"Accept": "application/dicom+json;;;q=x"})
        not_acceptable = client.get("/studies", headers={"Accept": "text/html"})
    assert [r.status_code for r in (missing, bad_accept, not_acceptable)] == [404, 400, 406]
    assert all(r.http_version == "HTTP/2" for r in (missing, bad_accept, not_acceptable))
    assert "malformed" in bad_accept.text


def test_over_long_heads_get_414_and_431_on_their_stream(embedded_h2: ServerProcess,
                                                         tls_files: TlsFiles) -> None:
    with _h2_client(embedded_h2, tls_files) as client:
        long_path = client.get("/studies", params={"PatientID": "x" * 17000})
        big_header = client.get("/studies", headers={"X-Filler": "y" * 17000})
        many = client.get("/studies", headers=[(f"x-h{i}", "1") for i in range(501)])
        after = client.get("/studies")  # the same connection serves on
    assert (long_path.status_code, long_path.http_version) == (414, "HTTP/2")
    assert big_header.status_code == 431 and many.status_code == 431
    assert "headers" in big_header.text
    assert after.status_code == 200
    # Past the 64 KiB field block the server announces, the HTTP/2 layer ends the connection.
    with _h2_client(embedded_h2, tls_files) as client, pytest.raises(httpx.RemoteProtocolError):
        client.get("/studies", headers={"X-Filler": "y" * 70000})


def test_cors_preflight_over_http2(embedded_h2: ServerProcess, tls_files: TlsFiles) -> None:
    with _h2_client(embedded_h2, tls_files) as client:
        response = client.options("/studies", headers={
            "Origin": "https://viewer.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, accept"})
    assert response.status_code in (200, 204) and response.http_version == "HTTP/2"
    assert response.headers["access-control-allow-origin"] in ("*", "https://viewer.example")
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


def test_metrics_count_http2_requests(embedded_h2: ServerProcess, tls_files: TlsFiles) -> None:
    with _h2_client(embedded_h2, tls_files) as client:
        for _ in range(3):
            client.get("/health")
        metrics = client.get("/metrics").text
    assert 'dicomweb_http_requests_total{method="GET",route="/health",status="200"}' in metrics


def test_basic_auth_over_http2(tmp_path: Path, tls_files: TlsFiles) -> None:
    users = write_users_file(tmp_path / "users")
    proc = _start(tmp_path, tls_files, "--auth", "basic", "--users-file", str(users))
    try:
        with _h2_client(proc, tls_files) as anonymous:
            refused = anonymous.get("/studies")
            refused_stow = _stow(anonymous, list(dicomgen.ct_series(1)))
        with _h2_client(proc, tls_files, auth=(WRITER, WRITER_PASSWORD)) as client:
            allowed = client.get("/studies")
            stored = _stow(client, list(dicomgen.ct_series(1)))
        assert (refused.status_code, refused.http_version) == (401, "HTTP/2")
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert refused_stow.status_code == 401
        assert (allowed.status_code, stored.status_code) == (200, 200)
    finally:
        _stop(proc)


# -- flow control and stream reset, with a hand-driven HTTP/2 client ------------------

class RawH2:
    """An HTTP/2 client connection that acknowledges data only when told."""

    def __init__(self, server: ServerProcess, tls: TlsFiles, window: int = 65535) -> None:
        context = ssl.create_default_context(cafile=tls.ca)
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # WINDOW_UPDATEs leave at once
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.initiate_connection()
        # A connection window too big to matter: the stream windows are under test.
        self.conn.increment_flow_control_window(1 << 30)
        self.flush()
        self.port = server.port
        self.received: dict[int, int] = {}
        self.unacknowledged: dict[int, int] = {}
        self.status: dict[int, str] = {}
        self.ended: set[int] = set()
        self.reset: set[int] = set()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def get(self, path: str, accept: str) -> int:
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", "GET"), (":path", path), (":scheme", "https"),
                                        (":authority", f"127.0.0.1:{self.port}"), ("accept", accept)],
                               end_stream=True)
        self.flush()
        self.received[stream] = self.unacknowledged[stream] = 0
        return stream

    def acknowledge(self) -> None:
        """Open the windows for everything received so far (WINDOW_UPDATE)."""
        for stream, length in self.unacknowledged.items():
            if length and stream not in self.ended | self.reset:
                self.conn.acknowledge_received_data(length, stream)
            self.unacknowledged[stream] = 0
        self.flush()

    def post(self, path: str, headers: list[tuple[str, str]], data: bytes) -> int:
        """Start a request with a body and send ``data`` of it (not its end;
        no more than the server's initial window, 65,535 bytes)."""
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", "POST"), (":path", path), (":scheme", "https"),
                                        (":authority", f"127.0.0.1:{self.port}"), *headers])
        self.received[stream] = self.unacknowledged[stream] = 0
        for start in range(0, len(data), 16384):
            self.conn.send_data(stream, data[start:start + 16384])
        self.flush()
        return stream

    def open_window(self, stream: int, increment: int) -> None:
        """Widen one stream's window at once (a reader with a large buffer)."""
        self.conn.increment_flow_control_window(increment, stream)
        self.flush()

    def pump(self, *, acknowledge: bool) -> bool:
        """Read what the server sent; False when it sent nothing for a second."""
        self.sock.settimeout(1)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        assert data, "the server closed the connection"
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.status[event.stream_id] = dict(event.headers)[b":status"].decode()
            elif isinstance(event, h2.events.DataReceived):
                self.received[event.stream_id] += len(event.data)
                self.unacknowledged[event.stream_id] += event.flow_controlled_length
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.reset.add(event.stream_id)
        if acknowledge:
            self.acknowledge()
        self.flush()
        return True

    def close(self) -> None:
        self.sock.close()


def _idle(pid: int, quiet: float = 0.5, timeout: float = 30) -> None:
    """Wait until the server process stops using CPU (its work is done or paused)."""
    process = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    last, since = sum(process.cpu_times()[:2]), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = sum(process.cpu_times()[:2])
        if now - last > 0.01:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise AssertionError("the server stayed busy")


@pytest.fixture(name="big_study", scope="module")
def big_study_fixture(embedded_h2: ServerProcess, tls_files: TlsFiles) -> tuple[str, int]:
    study = generate_uid()
    instances = list(dicomgen.ct_series(40, study_uid=study, size=512))  # ~21 MB
    with _h2_client(embedded_h2, tls_files) as client:
        assert _stow(client, instances).status_code == 200
    return study, sum(len(i) for i in instances)


def test_a_slow_http2_reader_holds_the_server_to_its_flow_control_window(
        embedded_h2: ServerProcess, tls_files: TlsFiles, big_study: tuple[str, int]) -> None:
    study, size = big_study
    assert embedded_h2.proc is not None
    server = psutil.Process(embedded_h2.proc.pid)
    client = RawH2(embedded_h2, tls_files)
    try:
        _idle(server.pid)
        before = server.memory_info().rss
        stream = client.get(f"/studies/{study}", DICOM)
        while client.pump(acknowledge=False):
            pass  # take what the window allows, then stop acknowledging
        _idle(server.pid)
        # Without WINDOW_UPDATE the server may send one stream window (64 KiB);
        # its producer is paused, so it neither sends nor reads ahead.
        assert client.received[stream] <= 65535
        grown = server.memory_info().rss - before
        assert grown < size // 3, f"server grew by {grown >> 20} MiB for a {size >> 20} MiB answer"
        client.acknowledge()  # now read it all: it resumes to the end
        client.open_window(stream, 1 << 26)
        while stream not in client.ended:
            assert client.pump(acknowledge=True) or stream in client.ended
        assert client.status[stream] == "200" and client.received[stream] > size
    finally:
        client.close()


def test_a_reader_with_a_wide_window_that_stops_reading_holds_the_server_to_the_socket(
        embedded_h2: ServerProcess, tls_files: TlsFiles, big_study: tuple[str, int]) -> None:
    # A browser announces windows of megabytes: flow control alone would let
    # the whole answer queue up in the server when the client stops reading.
    study, size = big_study
    assert embedded_h2.proc is not None
    server = psutil.Process(embedded_h2.proc.pid)
    client = RawH2(embedded_h2, tls_files, window=(1 << 31) - 1)
    try:
        _idle(server.pid)
        before = server.memory_info().rss
        stream = client.get(f"/studies/{study}", DICOM)
        client.pump(acknowledge=False)  # the response has started; then the client reads nothing
        _idle(server.pid)
        grown = server.memory_info().rss - before
        assert grown < size // 3, f"server grew by {grown >> 20} MiB for a {size >> 20} MiB answer"
        while stream not in client.ended:
            assert client.pump(acknowledge=True) or stream in client.ended
        assert client.status[stream] == "200" and client.received[stream] > size
    finally:
        client.close()


def test_a_reset_stream_stops_its_work_and_the_connection_goes_on(
        embedded_h2: ServerProcess, tls_files: TlsFiles, big_study: tuple[str, int]) -> None:
    study, _ = big_study
    already = embedded_h2.log().count(GONE)
    client = RawH2(embedded_h2, tls_files)
    try:
        stream = client.get(f"/studies/{study}", DICOM)
        while client.received[stream] < 30000:
            client.pump(acknowledge=True)
        client.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        client.flush()
        deadline = time.monotonic() + 30
        while embedded_h2.log().count(GONE) <= already and time.monotonic() < deadline:
            client.pump(acknowledge=True)
        assert embedded_h2.log().count(GONE) == already + 1, embedded_h2.log()[-2000:]
        # the same connection answers the next request in full
        again = client.get(f"/studies/{study}/metadata", "application/dicom+json")
        while again not in client.ended:
            client.pump(acknowledge=True)
        assert client.status[again] == "200"
    finally:
        client.close()


def test_a_stow_upload_reset_half_way_keeps_nothing_and_the_connection_goes_on(
        embedded_h2: ServerProcess, tls_files: TlsFiles) -> None:
    spool = Path(embedded_h2.data_dir) / "spool"
    parts = list(dicomgen.ct_series(4, size=256))  # ~0.5 MB
    body, boundary = multipart_body(parts)
    client = RawH2(embedded_h2, tls_files)
    try:
        stream = client.post("/studies", [
            ("content-type", f'multipart/related; type="application/dicom"; boundary={boundary}'),
            ("content-length", str(len(body)))], body[:60000])
        # the server has taken bytes when it acknowledges them (WINDOW_UPDATE)
        deadline = time.monotonic() + 30
        while client.conn.outbound_flow_control_window <= 65535 - 60000 and time.monotonic() < deadline:
            client.pump(acknowledge=True)
        assert any(spool.iterdir())  # the first part is being received into its file
        client.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        client.flush()
        deadline = time.monotonic() + 30
        while any(spool.iterdir()) and time.monotonic() < deadline:
            client.pump(acknowledge=True)
        assert not list(spool.iterdir())  # the part files of the cut body are gone
        again = client.get("/studies", "application/dicom+json")
        while again not in client.ended:
            client.pump(acknowledge=True)
        assert client.status[again] == "200"
    finally:
        client.close()


# -- the stream helpers on an HTTP/2 stream --------------------------------------------

class _Stream:
    """What the response helpers see of twisted.web's HTTP/2 stream: an id,
    no transport of its own, and the calls they make."""

    streamID = 1
    transport = None

    def __init__(self) -> None:
        self.calls: list[str] = []

    def abortConnection(self) -> None:
        self.calls.append("reset")

    def unregisterProducer(self) -> None:
        self.calls.append("unregister")


class _Request:
    def __init__(self, channel: _Stream) -> None:
        self.channel = channel

    def unregisterProducer(self) -> None:
        self.channel.unregisterProducer()


def test_a_failed_response_resets_its_http2_stream_and_unregisters_its_producer() -> None:
    from dicomweb.web.stream import abort, unregister

    stream = _Stream()
    request: Any = _Request(stream)
    abort(request)  # a response that fails half-way: the client must see it cut (RST_STREAM)
    unregister(request)  # the stream has no transport, yet takes the call
    assert stream.calls == ["reset", "unregister"]
