"""C-STORE SCP (PS3.4 Annex B): a received instance goes through the one
ingest path STOW-RS uses (:func:`dicomweb.ingest.ingest`).

pynetdicom writes the received data set straight to a Part 10 file
(``STORE_RECV_CHUNKED_DATASET``; the server sets it), in the store's spool
directory, so memory stays flat whatever the instance's size and the
embedded store moves the file into place with a rename.  The handler hands
that file to the ingest path and answers Success only once the store has
made the instance durable and searchable; a failed instance leaves nothing
stored.  A data set cut off mid-transfer (association aborted, socket
closed) never reaches the handler; :func:`discard_partial` deletes its
partial file.
"""

from __future__ import annotations

import os
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ..dicom import analyze as az
from ..ingest import IngestItem, ingest
from ..store import Store, StoreUnavailable
from ..twistedtypes import IReactor
from .bridge import Bridge, Stopping
from .identity import Gate

log = Logger()

SUCCESS = 0x0000
#: PS3.7 Annex C general status "Refused: Not authorized".
NOT_AUTHORIZED = 0x0124
#: PS3.4 Table B.2-1.
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

#: The STOW failure reasons (PS3.18 Table 10.5.3-2) as C-STORE statuses,
#: with the Error Comment sent with them (64 characters at most, LO).
_STATUS: dict[int, tuple[int, str]] = {
    az.OUT_OF_RESOURCES: (OUT_OF_RESOURCES, "out of resources: the instance was not stored"),
    az.DATASET_DOES_NOT_MATCH: (DATASET_DOES_NOT_MATCH, "data set does not match the SOP class"),
    az.CANNOT_UNDERSTAND: (CANNOT_UNDERSTAND, "cannot understand: required UIDs missing or invalid"),
    az.TRANSFER_SYNTAX_NOT_SUPPORTED: (CANNOT_UNDERSTAND, "cannot understand the transfer syntax"),
    az.SOP_CLASS_NOT_SUPPORTED: (0x0122, "SOP class not supported"),
    az.PROCESSING_FAILURE: (0x0110, "processing failure: the instance was not stored"),
}


def status(code: int, comment: str | None = None) -> Dataset:
    """A status with an Error Comment (PS3.7 C.4: (0000,0902), LO)."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


class StorageSCP:
    """The ``EVT_C_STORE`` handler."""

    def __init__(self, store: Store, reactor: IReactor, pool: ThreadPool, bridge: Bridge, gate: Gate) -> None:
        self.store, self.reactor, self.pool = store, reactor, pool
        self.bridge, self.gate = bridge, gate

    def __call__(self, event: Any) -> Dataset:
        principal = self.gate.principal(event.assoc)
        if principal is None or not principal.can_write:
            return status(NOT_AUTHORIZED, "storing needs the write role")
        path = str(event.dataset_path)
        if not same_instance(path, str(event.request.AffectedSOPInstanceUID or "")):
            log.info("C-STORE refused: the data set's SOP Instance UID is not the request's")
            return status(DATASET_DOES_NOT_MATCH, "SOP Instance UID differs from the C-STORE request's")
        try:
            item = IngestItem(None, None, 0, os.path.getsize(path), path)
            results = self.bridge.call(ingest, self.store, self.reactor, self.pool, [item], None)
        except Stopping:
            return status(OUT_OF_RESOURCES, "the server is stopping; send again later")
        except (StoreUnavailable, OSError):
            log.warn("C-STORE: the store cannot take the instance now")
            return status(OUT_OF_RESOURCES, "the store is unavailable; send again later")
        except Exception:
            log.failure("C-STORE: storing failed")
            return status(0x0110, "processing failure: the instance was not stored")
        result = results[0]
        if result.failure:
            code, comment = _STATUS.get(result.failure, (CANNOT_UNDERSTAND, "the instance was not stored"))
            return status(code, comment)
        return status(SUCCESS)


def same_instance(path: str, affected: str) -> bool:
    """False when the received data set names a SOP Instance UID other than
    the request's Affected SOP Instance UID (PS3.7 9.3.1.1: both identify the
    same instance).  A data set without one, or that cannot be read, is left
    to the ingest analysis, which refuses it with its own status."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=[0x00080018])
    except Exception:
        return True
    uid = ds.get("SOPInstanceUID")
    if uid is None:
        return True
    return str(uid).rstrip("\0 ") == affected.rstrip("\0 ")


def discard_partial(event: Any) -> None:
    """``EVT_CONN_CLOSE``/``EVT_ABORTED``: delete the file of a data set still
    being received (pynetdicom resets the message it assembles as soon as it
    is complete, so a message left here was cut off)."""
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return
    try:
        partial.close()
        os.unlink(partial.name)
    except OSError:
        return
    log.info("DIMSE: a data set cut off mid-transfer was discarded")


__all__ = ["StorageSCP", "discard_partial", "same_instance", "status"]
