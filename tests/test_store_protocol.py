"""Every store, and the metrics wrapper, implements the whole Store interface
with the same shapes (mypy checks the signatures where the wiring assigns
them; this checks the kinds: coroutine, async generator, plain method,
property), and the wrapper times the calls it forwards."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import pytest_twisted

from dicomweb.dicom.query import Query, parse_query
from dicomweb.store import base
from dicomweb.store.base import InstanceRecord, Spool, Store, StoreItem, StoreOutcome
from dicomweb.store.changes import Change
from dicomweb.store.couch import CouchStore
from dicomweb.store.embedded import EmbeddedStore
from dicomweb.web.metrics import InstrumentedStore, Metrics


def _kind(owner: type, name: str) -> str:
    attr = inspect.getattr_static(owner, name)
    if isinstance(attr, property):
        return "property"
    if inspect.isasyncgenfunction(attr):
        return "async generator"
    if inspect.iscoroutinefunction(attr):
        return "coroutine"
    return "method" if callable(attr) else "attribute"


MEMBERS = sorted(n for n in vars(Store) if not n.startswith("_"))
#: What the Protocol declares: ``chunks`` is a plain method returning an
#: AsyncIterator, which an async generator function is.
EXPECTED = {n: _kind(Store, n) for n in MEMBERS} | {"chunks": "async generator"}


@pytest.mark.parametrize("cls", [EmbeddedStore, CouchStore, InstrumentedStore])
def test_each_store_has_every_member_of_the_interface_in_its_shape(cls: type) -> None:
    assert "spool" in MEMBERS and "purge_rejected" in MEMBERS
    assert {n: _kind(cls, n) for n in MEMBERS} == EXPECTED


class _Fake:
    """A store whose every call answers at once."""

    name = "fake"
    spool = Spool(None)

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ready(self) -> bool: return True
    async def store_batch(self, items: Sequence[StoreItem]) -> list[StoreOutcome]: return []
    async def instances(self, study: str, series: str | None = None, sop: str | None = None) -> list[InstanceRecord]:
        raise base.not_found(series, sop)
    async def metadata(self, study: str, series: str | None = None, sop: str | None = None) -> list[bytes]: return []
    async def version(self, study: str, series: str | None = None) -> str: return "v1"
    async def read(self, record: InstanceRecord, offset: int, length: int) -> bytes: return b""
    async def chunks(self, record: InstanceRecord, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"
    def local_path(self, record: InstanceRecord) -> str | None: return None
    async def search(self, query: Query) -> list[dict[str, Any]]: return []
    async def delete(self, study: str, series: str | None = None, sop: str | None = None) -> int: return 1
    async def reject(self, study: str, series: str | None, sop: str | None, code: str, scheme: str) -> int: return 1
    async def purge_rejected(self, older_than: float) -> int: return 2
    async def changes(self, offset: int, limit: int, metadata: bool) -> list[Change]: return []
    async def latest_change(self, metadata: bool) -> Change | None: return None
    async def wait_changes(self, offset: int, timeout: float) -> bool: return False


@pytest_twisted.ensureDeferred
async def test_the_instrumented_store_forwards_and_times_calls() -> None:
    metrics = Metrics()
    store: Store = InstrumentedStore(_Fake(), metrics)
    record = InstanceRecord("1", "2", "3", "4", "5", 2, None, {}, "x")
    assert store.name == "fake" and store.spool.parts_dir is None
    assert await store.search(parse_query("study", [])) == []
    assert [c async for c in store.chunks(record)] == [b"a", b"b"]
    assert await store.purge_rejected(1.0) == 2
    assert await store.version("1") == "v1"
    with pytest.raises(base.NotFound, match="no such study"):
        await store.instances("1")
    text = metrics.exposition().decode()
    for operation, count in (("search", 1), ("chunk", 2), ("instances", 1), ("version", 1)):
        assert (f'dicomweb_store_operation_duration_seconds_count{{operation="{operation}",store="fake"}} '
                f"{count}.0") in text
    assert 'operation="store_batch"' not in text  # an operation never called is not exposed
