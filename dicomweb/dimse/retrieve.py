"""C-GET and C-MOVE SCP (PS3.4 C.4.2, C.4.3).

The identifier selects instances with the same query model as C-FIND (asked
at the instance level, so a STUDY or SERIES retrieve lists every instance
below it).  Each instance is sent as stored when the receiving association
accepted the stored transfer syntax (Pixel Data byte for byte as received);
else it is transcoded with the transcoder WADO-RS uses, to a syntax the
peer accepted; else that sub-operation fails.  pynetdicom sends the pending
responses and counts remaining/completed/failed/warning sub-operations from
the peer's C-STORE answers.

C-GET sends on the requesting association (the peer proposed the storage
SOP classes with SCP/SCU role selection); C-MOVE opens an association to a
known peer (``--dimse-peer``), and an unknown destination gets A801.
"""

from __future__ import annotations

import io
import ssl
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from twisted.logger import Logger

from ..dicom import transcode
from ..dicom.query import DEFAULT_MAX_LIMIT
from ..store import InstanceRecord, NotFound, Store, StoreUnavailable
from .bridge import Bridge, Stopping
from .find import CANCEL, PENDING, FindError, build_query, model_of
from .identity import Gate
from .peers import Peer
from .sockets import on_connection_open
from .storage import NOT_AUTHORIZED, OUT_OF_RESOURCES, status

log = Logger()

IMPLICIT_LE, EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
#: pynetdicom re-encodes a data set between these two itself (same bytes
#: for Pixel Data: both little endian, native).
NATIVE_LE = frozenset({IMPLICIT_LE, EXPLICIT_LE})
#: PS3.8 9.3.2.2: at most 128 presentation contexts per association.
MAX_CONTEXTS = 128
#: PS3.4 Table C.4-2/C.4-3: "Unable to process" (no instance list could be made).
UNABLE_TO_PROCESS = 0xC000


def accepted_syntaxes(assoc: Any, sop_class: str) -> list[str]:
    """Transfer syntaxes in which ``assoc`` lets us send ``sop_class`` as
    storage SCU, in the order the contexts were accepted."""
    return [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
            if str(cx.abstract_syntax) == sop_class and cx.as_scu]


def choose_syntax(stored: str, accepted: list[str]) -> str | None:
    """What to send: the stored syntax when the peer takes it (or pynetdicom
    can re-encode it between the native little-endian syntaxes), else the
    first accepted syntax the transcoder can produce; None: not sendable."""
    if stored in accepted or (stored in NATIVE_LE and NATIVE_LE & set(accepted)):
        return stored
    for target in accepted:
        if transcode.can_transcode(stored, target):
            return target
    return None


def move_contexts(records: list[InstanceRecord]) -> list[Any]:
    """Presentation contexts to propose to a C-MOVE destination: each SOP
    class in each stored syntax, and in the native syntaxes as a fallback."""
    from pynetdicom import build_context

    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    for r in records:
        wanted[(r.sop_class_uid, (r.transfer_syntax_uid,))] = None
    for r in records:
        wanted[(r.sop_class_uid, (EXPLICIT_LE, IMPLICIT_LE))] = None
    return [build_context(sop, list(syntaxes)) for sop, syntaxes in list(wanted)[:MAX_CONTEXTS]]


class Retriever:
    """The ``EVT_C_GET`` and ``EVT_C_MOVE`` handlers."""

    def __init__(self, store: Store, bridge: Bridge, gate: Gate, ae_title: str, peers: tuple[Peer, ...],
                 page: int = DEFAULT_MAX_LIMIT, peer_tls: ssl.SSLContext | None = None) -> None:
        self.store, self.bridge, self.gate = store, bridge, gate
        self.ae_title, self.page, self.peer_tls = ae_title, page, peer_tls
        self.peers = {p.ae_title: p for p in peers}

    # -- which instances -------------------------------------------------------

    def matches(self, identifier: Dataset, model: str | None = None) -> list[InstanceRecord]:
        """The stored instances the identifier selects (at PATIENT level:
        every instance of the patients its Patient ID names).  FindError."""
        query = build_query(identifier, level="instance", max_limit=self.page, model=model)
        by_study: dict[str, set[str]] = {}
        offset = 0
        while True:
            page = self.bridge.call(self.store.search, replace(query, offset=offset, limit=self.page))
            for item in page:
                study = item.get("0020000D", {}).get("Value", [""])[0]
                sop = item.get("00080018", {}).get("Value", [""])[0]
                by_study.setdefault(study, set()).add(sop)
            if len(page) < self.page:
                break
            offset += len(page)
        records: list[InstanceRecord] = []
        for study, sops in by_study.items():
            try:
                found = self.bridge.call(self.store.instances, study)
            except NotFound:  # removed since the search
                continue
            records.extend(r for r in found if r.sop_uid in sops)
        return records

    # -- what is sent ----------------------------------------------------------

    def _bytes(self, record: InstanceRecord) -> bytes:
        path = self.store.local_path(record)
        if path is not None:
            with open(path, "rb") as fp:
                return fp.read()
        data: bytes = self.bridge.call(self.store.read, record, 0, record.size)
        return data

    def dataset(self, record: InstanceRecord, accepted: list[str]) -> Dataset:
        """The data set to send for ``record``; when nothing the peer accepted
        can carry it, a stub that pynetdicom cannot send (the sub-operation
        is counted as failed, with this SOP Instance UID)."""
        target = choose_syntax(record.transfer_syntax_uid, accepted)
        if target is None:
            log.info("retrieve: no accepted transfer syntax for a stored {syntax} instance",
                     syntax=record.transfer_syntax_uid)
            return _unsendable(record)
        data = self._bytes(record)
        if target != record.transfer_syntax_uid:
            try:
                data = transcode.transcode_instance(data, target)
            except Exception:
                log.info("retrieve: transcoding {stored} to {target} failed",
                         stored=record.transfer_syntax_uid, target=target)
                return _unsendable(record)
        return dcmread(io.BytesIO(data))

    # -- handlers --------------------------------------------------------------

    def _prepare(self, event: Any) -> list[InstanceRecord] | Dataset:
        """The instances to send, or the failure status to answer."""
        if self.gate.principal(event.assoc) is None:
            return status(NOT_AUTHORIZED, "not authorized")
        try:
            return self.matches(event.identifier, model_of(event))
        except FindError as exc:
            log.info("retrieve refused: {reason}", reason=exc.comment)
            return status(exc.code, exc.comment)
        except (Stopping, StoreUnavailable):
            return status(OUT_OF_RESOURCES, "the store is unavailable; retrieve again later")
        except Exception:
            log.failure("retrieve: listing the instances failed")
            return status(UNABLE_TO_PROCESS, "the retrieve failed")

    def _send(self, event: Any, records: list[InstanceRecord], assoc_of: Any) -> Iterator[tuple[Any, Any]]:
        for record in records:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, self.dataset(record, accepted_syntaxes(assoc_of(), record.sop_class_uid))

    def get(self, event: Any) -> Iterator[Any]:
        """C-GET: the count, then one pending (status, data set) per instance."""
        prepared = self._prepare(event)
        if isinstance(prepared, Dataset):
            yield 1
            yield prepared, None
            return
        yield len(prepared)
        yield from self._send(event, prepared, lambda: event.assoc)

    def move(self, event: Any) -> Iterator[Any]:
        """C-MOVE: the destination, the count, then the instances."""
        from pynetdicom import evt

        destination = str(event.move_destination).strip()
        peer = self.peers.get(destination)
        if peer is None:
            log.info("C-MOVE refused: destination AE {ae} is not a known peer", ae=destination)
            yield None, None  # pynetdicom answers A801, Move Destination unknown
            return
        prepared = self._prepare(event)
        opened: list[Any] = []
        if isinstance(prepared, Dataset):
            yield peer.host, peer.port
            yield 1
            yield prepared, None
            return
        handlers = [(evt.EVT_CONN_OPEN, on_connection_open), (evt.EVT_ACCEPTED, lambda e: opened.append(e.assoc))]
        options: dict[str, Any] = {"contexts": move_contexts(prepared) or None, "evt_handlers": handlers}
        if peer.tls and self.peer_tls is not None:
            options["tls_args"] = (self.peer_tls, peer.host)
        yield peer.host, peer.port, options
        yield len(prepared)
        yield from self._send(event, prepared, lambda: opened[-1])


def _unsendable(record: InstanceRecord) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = record.sop_class_uid
    ds.SOPInstanceUID = record.sop_uid
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(record.transfer_syntax_uid)
    return ds


__all__ = ["Retriever", "accepted_syntaxes", "choose_syntax", "move_contexts"]
