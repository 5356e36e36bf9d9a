"""Stores: one asynchronous interface, several back ends.

The web layer only sees :class:`~dicomweb.store.base.Store`; the embedded
store (SQLite + files) is the default, CouchDB is the shared one.
"""

from .base import (
    InstanceRecord,
    NotFound,
    Spool,
    Store,
    StoreItem,
    StoreOutcome,
    StoreUnavailable,
)

__all__ = [
    "InstanceRecord",
    "NotFound",
    "Spool",
    "Store",
    "StoreItem",
    "StoreOutcome",
    "StoreUnavailable",
]
