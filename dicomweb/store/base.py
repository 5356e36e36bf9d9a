"""The store interface that every back end implements.

Contract (the conformance suite in ``tests/`` holds every store to it):

- ``store_batch`` makes a batch of analysed instances durable. When its
  Deferred fires, every item reported ``stored``/``replaced``/``unchanged`` is
  on stable storage and visible to the next search (read-your-writes); an item
  that failed left nothing visible behind.
- Storing a SOP Instance UID that is already stored replaces it (latest wins)
  unless the bytes are identical, which is a no-op (``unchanged``): retries are
  idempotent and nothing is ever duplicated.
- Reads never parse DICOM: metadata, frame ranges and level attributes were
  computed at store time.

:class:`Store` is the whole interface the service uses: the web layer, the
ingest path, the metrics wrapper and the wiring in ``tap.py`` call nothing
else. The command-line tools that work without a reactor use the embedded
store's synchronous core, :class:`~dicomweb.store.sqlindex.EmbeddedIndex`.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal, Protocol

from ..dicom.analyze import InstanceInfo, Range
from ..dicom.query import Query
from .changes import Change

Outcome = Literal["stored", "replaced", "unchanged", "failed"]


class NotFound(LookupError):
    """No such study, series or instance."""


def not_found(series: str | None = None, sop: str | None = None) -> NotFound:
    """The NotFound of a target: an instance when ``sop`` is given, else a
    series when ``series`` is, else a study (the text a 404 carries)."""
    return NotFound("no such " + ("instance" if sop else "series" if series else "study"))


class StoreUnavailable(RuntimeError):
    """The back end cannot be reached now; the request may be retried (503)."""


@dataclass(frozen=True)
class StoreItem:
    """One analysed instance and where its received bytes are."""

    info: InstanceInfo
    source: IO[bytes]  # the spooled request body (or a file) holding the bytes
    offset: int
    length: int
    #: A file holding exactly these bytes (``source`` opened, offset 0) that
    #: the store may *move* into place instead of copying; after a stored or
    #: replaced outcome it may be gone. None: copy from ``source``.
    path: str | None = None
    #: ``path`` is already durable (fsynced by the receiver while the rest of
    #: the body arrived): a store that moves it into place need not sync its
    #: data again, only the directory it lands in.
    synced: bool = False


@dataclass(frozen=True)
class StoreOutcome:
    outcome: Outcome
    reason: str = ""  # for "failed": short text, never patient data
    failure: int = 0  # DICOM failure reason for "failed"


@dataclass(frozen=True)
class InstanceRecord:
    """What retrieval needs to serve one stored instance."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    frames: list[list[Range]] | None
    bulk: dict[str, Range]
    location: str  # back-end specific key of the Part 10 bytes


class Spool:
    """Where the web layer receives request bodies for a store.

    ``temporary_file()`` gives an anonymous file for a whole body, in
    ``directory`` (None: the system's temporary directory). When
    ``parts_dir`` is set, a multipart/related body is instead split into one
    file per part there as it arrives; being on the store's file system, a
    part file can then be renamed into the store (``StoreItem.path``) rather
    than copied. Files left in ``parts_dir`` by a crash were never
    acknowledged; the store removes them when it opens.
    """

    def __init__(self, directory: str | None, parts_dir: str | None = None) -> None:
        self.directory = directory
        self.parts_dir = parts_dir

    def temporary_file(self) -> IO[bytes]:
        return tempfile.TemporaryFile(dir=self.directory)


class Store(Protocol):
    """An asynchronous DICOM store. All methods are non-blocking.

    Store-specific failures that a client may retry raise
    :class:`StoreUnavailable`; a missing target raises :class:`NotFound`.
    """

    #: Short back-end name, used as a metric label ("embedded", "couch").
    name: str

    @property
    def spool(self) -> Spool:
        """Where request bodies for this store are received (see :class:`Spool`)."""

    async def open(self) -> None:
        """Create or upgrade what the store needs; wait for the back end."""

    async def close(self) -> None:
        """Release connections and threads."""

    async def ready(self) -> bool:
        """Whether the back end answers now (for /ready)."""

    async def store_batch(self, items: Sequence[StoreItem]) -> list[StoreOutcome]:
        """Persist ``items`` durably; one outcome per item, in order."""

    async def instances(self, study: str, series: str | None = None,
                        sop: str | None = None) -> list[InstanceRecord]:
        """Instances of a study/series/instance, ordered by series and
        instance number. Raises NotFound when there are none."""

    async def metadata(self, study: str, series: str | None = None,
                       sop: str | None = None) -> list[bytes]:
        """Stored DICOM JSON texts (relative BulkDataURIs), same order as
        ``instances``. Raises NotFound when there are none."""

    async def version(self, study: str, series: str | None = None) -> str:
        """A short opaque token of the current state of a study's (or a
        series') instances: it changes whenever ``metadata(study, series)``
        would answer differently (an instance stored, replaced, moved,
        rejected, deleted or restored), and only then. Cheaper than the
        metadata: the web layer names its cached answers with it
        (``ETag``). It is at least as old as what a ``metadata`` call made
        after it returns. Raises NotFound when there are no instances."""

    async def read(self, record: InstanceRecord, offset: int, length: int) -> bytes:
        """``length`` bytes of the stored Part 10 object from ``offset``."""

    def chunks(self, record: InstanceRecord, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The whole stored Part 10 object, as a stream of chunks."""

    def local_path(self, record: InstanceRecord) -> str | None:
        """A local file holding the stored Part 10 object (written once, never
        modified), so the web layer can send it zero-copy; None when the
        bytes live elsewhere and only ``read``/``chunks`` reach them."""

    async def search(self, query: Query) -> list[dict[str, Any]]:
        """QIDO: the answers to ``query``, in a stable order, ``query.offset``
        skipped and at most ``query.limit`` returned. Each is DICOM JSON with
        the tags of ``query.return_tags()`` the store has (or, for
        ``include_all``, every stored level attribute), counts exact, and
        RetrieveURL relative to the service root (``studies/{uid}...``).

        A ``patient`` level query is answered from the store's patient index
        (README "Patients"): one answer per (PatientID, IssuerOfPatientID) in
        that order, the Patient module attributes of the patient's study that
        most recently received an instance, NumberOfPatientRelatedStudies /
        -Series / -Instances exact, no RetrieveURL."""

    async def delete(self, study: str, series: str | None = None, sop: str | None = None) -> int:
        """Remove the instances of a study/series/instance, rejected ones
        included: index entries, metadata and bytes; aggregates recomputed
        (empty series and studies disappear). Returns how many were removed;
        raises NotFound when there were none. Never leaves an index entry
        whose bytes are gone, whatever moment a crash picks."""

    async def reject(self, study: str, series: str | None, sop: str | None, code: str, scheme: str) -> int:
        """Move the visible instances of a study/series/instance out of search
        and retrieval, keeping their bytes (README "Delete and reject");
        storing an instance again restores it, ``delete`` purges it. Returns
        how many were rejected; raises NotFound when there were none."""

    async def purge_rejected(self, older_than: float) -> int:
        """Delete, bytes included, the instances rejected more than
        ``older_than`` seconds ago (README "Delete and reject"); returns how
        many were purged."""

    async def changes(self, offset: int, limit: int, metadata: bool) -> list[Change]:
        """The change feed (README "Change feed"): the events with a sequence
        greater than ``offset``, oldest first, at most ``limit``; each with
        its state as of now and, when ``metadata`` and the state is Current,
        the instance's stored DICOM JSON. Sequences are dense and never
        renumbered: asking again with the last sequence seen never misses or
        repeats an event."""

    async def latest_change(self, metadata: bool) -> Change | None:
        """The newest event of the change feed; None when there is none."""

    async def wait_changes(self, offset: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for an event with a sequence greater
        than ``offset``; whether there is one. Waiters share what wakes them
        (no poll per waiter)."""
