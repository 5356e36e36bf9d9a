"""Stores: one asynchronous interface, several back ends.

The service only sees :class:`~dicomweb.store.base.Store`; the embedded
store (SQLite + files) is the default, CouchDB is the shared one.

- ``base``: the interface (``Store``, ``Spool``, records, outcomes, errors);
  ``common``: Twisted helpers and retry constants shared by the back ends.
  The query model's order and availability rules are ``dicomweb.dicom.order``.
- Embedded: ``embedded`` (the asynchronous store) over ``sqlindex``
  (``EmbeddedIndex``: index + files, synchronous, also used by the
  command-line tools), ``sqlschema``, ``sqlsearch``, ``sqlremove``.
- CouchDB: ``couch`` (the store: attachments, STOW's write order, crash
  repair) composing ``couchdocs`` (document access and paging),
  ``couchsearch``, ``couchremove``, ``couchaggregates`` and ``couchschema``
  (indexes and upgrades), over ``couchhttp`` (the HTTP client).
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
