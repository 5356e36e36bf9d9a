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
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, Protocol

from ..dicom.analyze import InstanceInfo, Range
from ..dicom.query import Query

Outcome = Literal["stored", "replaced", "unchanged", "failed"]


class NotFound(LookupError):
    """No such study, series or instance."""


class StoreUnavailable(RuntimeError):
    """The back end cannot be reached now; the request may be retried (503)."""


@dataclass(frozen=True)
class StoreItem:
    """One analysed instance and where its received bytes are."""

    info: InstanceInfo
    source: BinaryIO  # the spooled request body (or a file) holding the bytes
    offset: int
    length: int
    #: A file holding exactly these bytes (``source`` opened, offset 0) that
    #: the store may *move* into place instead of copying; after a stored or
    #: replaced outcome it may be gone. None: copy from ``source``.
    path: str | None = None


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


class Store(Protocol):
    """An asynchronous DICOM store. All methods are non-blocking."""

    name: str

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
        RetrieveURL relative to the service root (``studies/{uid}...``)."""

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
