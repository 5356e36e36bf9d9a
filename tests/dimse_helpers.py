"""DIMSE test helpers: the server with its DIMSE listener, dcmtk's tools,
pynetdicom as SCU, and a pynetdicom storage SCP acting as a C-MOVE peer.

dcmtk's command-line tools come from Debian's ``dcmtk`` package
(``scripts/install-system-deps``); pynetdicom installs Python tools with the
same names earlier on ``PATH``, so dcmtk's are taken from /usr/bin.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu_primitives import UserIdentityNegotiation

from tests.server import ServerProcess


def pydicom_file(name: str) -> str:
    """The path of one of pydicom's test files (get_testdata_file may also return a Dataset or None)."""
    path = get_testdata_file(name)
    assert isinstance(path, str), f"pydicom has no test file {name}"
    return path

SERVER_AE = "DICOMWEB"
DCMTK_BIN = "/usr/bin"
_DIMSE_PORT_RE = re.compile(r"DIMSE listener \(AE [^)]*\) starting on (\d+)")

VERIFICATION = "1.2.840.10008.1.1"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE, EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"


def dcmtk(tool: str) -> str:
    """The path of a dcmtk tool; skips (fails in CI) when dcmtk is missing."""
    path = os.path.join(DCMTK_BIN, tool)
    if not os.access(path, os.X_OK):
        if os.environ.get("CI"):
            raise RuntimeError("dcmtk is not installed: scripts/install-system-deps installs it")
        pytest.skip("dcmtk is not installed (apt-get install dcmtk)")
    return path


def run_dcmtk(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk(tool), *args], capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DimseServer(ServerProcess):
    """The server with ``--dimse-port 0``; ``dimse_port`` is the port it took."""

    dimse_port = 0

    def __init__(self, data_dir: str, log_path: str, *extra: str, env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, log_path, "--dimse-port", "0", *extra, env=env)

    def start(self, timeout: float = 30) -> DimseServer:
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _DIMSE_PORT_RE.search(self.log())
            if match:
                self.dimse_port = int(match.group(1))
                return self
            time.sleep(0.05)
        raise RuntimeError("the DIMSE listener did not start:\n" + self.log()[-3000:])


def associate(port: int, contexts: Sequence[tuple[str, Sequence[str]]], *, ae_title: str = "TESTSCU",
              roles: Sequence[str] = (), handlers: Sequence[Any] = (), user: tuple[int, bytes, bytes] | None = None
              ) -> Any:
    """A pynetdicom association to the server (the caller releases it)."""
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, list(syntaxes) or [EXPLICIT_LE, IMPLICIT_LE])
    ext_neg: list[Any] = [build_role(uid, scp_role=True) for uid in roles]
    if user is not None:
        item = UserIdentityNegotiation()
        item.user_identity_type, item.primary_field, item.secondary_field = user
        ext_neg.append(item)
    return ae.associate("127.0.0.1", port, ae_title=SERVER_AE, ext_neg=ext_neg or None,
                        evt_handlers=list(handlers))


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def c_find(port: int, query: Dataset, model: str = STUDY_FIND) -> tuple[int, list[Dataset], Dataset | None]:
    """(final status, pending identifiers, final status data set)."""
    assoc = associate(port, [(model, [])])
    assert assoc.is_established
    try:
        answers, final, last = [], 0, None
        for status, ident in assoc.send_c_find(query, model):
            if status is None:
                raise AssertionError("no C-FIND response")
            if status.Status in (0xFF00, 0xFF01):
                answers.append(ident)
            else:
                final, last = status.Status, status
        return final, answers, last
    finally:
        assoc.release()


def c_store_file(port: int, path: str, sop_class: str, syntax: str) -> Dataset:
    """Send one Part 10 file as it is on disk (pynetdicom reads it in chunks,
    without decoding it); the response status data set."""
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return _send_one(port, sop_class, syntax, path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False


def c_store(port: int, data: bytes, **kwargs: Any) -> Dataset:
    """Send one Part 10 object with pynetdicom; the response status data set."""
    import io

    ds = dcmread(io.BytesIO(data))
    return _send_one(port, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), ds, **kwargs)


def _send_one(port: int, sop_class: str, syntax: str, what: Dataset | str, **kwargs: Any) -> Dataset:
    """One C-STORE of ``what`` (a data set or a Part 10 file's path) on an
    association of its own; the response status data set."""
    assoc = associate(port, [(sop_class, [syntax])], **kwargs)
    assert assoc.is_established, "association rejected"
    try:
        status: Dataset = assoc.send_c_store(what)
        return status
    finally:
        assoc.release()


def send_partial_c_store(port: int, data: bytes, pdus: int = 8) -> None:
    """Open an association, send the C-STORE command and the first ``pdus``
    P-DATA PDUs of the data set, then cut the TCP connection."""
    import io

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF

    ds = dcmread(io.BytesIO(data))
    assoc = associate(port, [(str(ds.SOPClassUID), [EXPLICIT_LE])])
    assert assoc.is_established
    req = C_STORE()
    req.MessageID, req.Priority = 1, 2
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    req.DataSet = io.BytesIO(_dataset_bytes(data))
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    context_id = assoc.accepted_contexts[0].context_id
    for number, primitive in enumerate(message.encode_msg(context_id, 16384)):
        if number >= pdus:
            break
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        assoc.dul.socket.socket.sendall(pdu.encode())
    assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
    assoc.kill()


def _dataset_bytes(data: bytes) -> bytes:
    """The data set of a Part 10 object, without preamble and file meta."""
    import io

    from pydicom.filereader import _read_file_meta_info, read_preamble

    fp = io.BytesIO(data)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return data[fp.tell():]


class Received:
    """Part 10 bytes received by a C-STORE SCP (ours in C-GET, a peer's in C-MOVE)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def handle(self, event: Any) -> int:
        data = event.encoded_dataset()
        ds = dcmread(__import__("io").BytesIO(data))
        with self.lock:
            self.files[str(ds.SOPInstanceUID)] = data
        return 0x0000


def c_get(port: int, query: Dataset, sop_classes: Sequence[tuple[str, Sequence[str]]]
          ) -> tuple[list[Dataset], Received]:
    """Every C-GET response status data set, and what came back."""
    received = Received()
    assoc = associate(port, [(STUDY_GET, []), *sop_classes], roles=[s for s, _ in sop_classes],
                      handlers=[(evt.EVT_C_STORE, received.handle)])
    assert assoc.is_established
    try:
        statuses = [status for status, _ in assoc.send_c_get(query, STUDY_GET)]
        return statuses, received
    finally:
        assoc.release()


def c_move(port: int, query: Dataset, destination: str) -> list[Dataset]:
    assoc = associate(port, [(STUDY_MOVE, [])])
    assert assoc.is_established
    try:
        return [status for status, _ in assoc.send_c_move(query, destination, STUDY_MOVE)]
    finally:
        assoc.release()


class PeerSCP:
    """A pynetdicom storage SCP on a free loopback port: a C-MOVE destination."""

    def __init__(self, ae_title: str = "PEER", syntaxes: Sequence[str] | None = None, ssl_context: Any = None) -> None:
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts

        self.ae_title, self.ssl_context = ae_title, ssl_context
        self.port = free_port()
        self.received = Received()
        self.ae = AE(ae_title=ae_title)
        for cx in AllStoragePresentationContexts:
            self.ae.add_supported_context(str(cx.abstract_syntax), list(syntaxes or ALL_TRANSFER_SYNTAXES))
        self.server: Any = None

    @property
    def option(self) -> str:
        """The ``--dimse-peer`` value (``tls://localhost``: the test certificate's name)."""
        return f"{self.ae_title}=tls://localhost:{self.port}" if self.ssl_context else \
            f"{self.ae_title}=127.0.0.1:{self.port}"

    def __enter__(self) -> PeerSCP:
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=self.ssl_context,
                                           evt_handlers=[(evt.EVT_C_STORE, self.received.handle)])
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
