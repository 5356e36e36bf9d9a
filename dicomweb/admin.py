"""``dicomweb-admin``: maintenance commands that are not HTTP routes.

- ``purge-rejected --older-than DAYS``: delete (bytes included) the instances
  rejected more than DAYS ago (README "Delete and reject"), on the embedded
  store (``--data-dir``) or CouchDB (``--couchdb URL --couchdb-db NAME``,
  credentials from ``DICOMWEB_COUCHDB_USER``/``DICOMWEB_COUCHDB_PASSWORD``).
- ``orphans [--delete]``: list (or remove) files of the embedded store that
  no index row points to, which a crash between an index commit and the
  unlinks after it may leave (harmless: never served).

Safe while the server runs: the embedded store's writes are SQLite
transactions (serialised across processes), CouchDB's are revisioned.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from .twistedtypes import IReactor

if TYPE_CHECKING:
    from .store.base import Store
    from .store.sqlindex import EmbeddedIndex

DAY = 86400.0


def _embedded(data_dir: str) -> EmbeddedIndex:
    from .store.sqlindex import EmbeddedIndex

    index = EmbeddedIndex(data_dir)
    index.open()
    return index


def purge_rejected(args: argparse.Namespace) -> int:
    older_than = args.older_than * DAY
    if args.couchdb:
        _on_couch(args, lambda store: store.purge_rejected(older_than))  # prints, exits
    index = _embedded(args.data_dir)
    try:
        _report(index.purge_rejected(older_than))
    finally:
        index.close()
    return 0


def _report(count: int) -> None:
    print(f"purged {count} rejected instances")


def orphans(args: argparse.Namespace) -> int:
    index = _embedded(args.data_dir)
    try:
        found = index.orphan_files()
    finally:
        index.close()
    for path in found:
        print(path)
        if args.delete:
            os.unlink(path)
    print(f"{len(found)} orphan files" + (" deleted" if args.delete else ""), file=sys.stderr)
    return 0


def _on_couch(args: argparse.Namespace, action: Callable[[Store], Awaitable[int]]) -> None:
    """Run ``action(store)`` on the reactor, print its count, exit."""
    from twisted.internet import task
    from twisted.internet.defer import ensureDeferred

    from .store.couch import CouchStore

    async def run(reactor: IReactor) -> None:
        # the reactor's own pool: the maintenance actions never store, so it stays idle
        store = CouchStore(args.couchdb, args.couchdb_db, reactor, reactor.getThreadPool(),
                           user=os.environ.get("DICOMWEB_COUCHDB_USER"),
                           password=os.environ.get("DICOMWEB_COUCHDB_PASSWORD"))
        await store.open()
        try:
            _report(await action(store))
        finally:
            await store.close()

    task.react(lambda reactor: ensureDeferred(run(reactor)))  # exits the process


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dicomweb-admin", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="./dicomweb-data", help="embedded store directory")
    p.add_argument("--couchdb", help="CouchDB URL (purge-rejected only)")
    p.add_argument("--couchdb-db", default="dicomweb")
    sub = p.add_subparsers(dest="command", required=True)
    purge = sub.add_parser("purge-rejected", help="delete instances rejected more than DAYS ago")
    purge.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    purge.set_defaults(run=purge_rejected)
    orphan = sub.add_parser("orphans", help="list files no index entry points to (embedded store)")
    orphan.add_argument("--delete", action="store_true", help="remove them")
    orphan.set_defaults(run=orphans)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
