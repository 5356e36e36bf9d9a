"""``dicomweb-admin``: maintenance commands that are not HTTP routes.

- ``purge-rejected --older-than DAYS``: delete (bytes included) the instances
  rejected more than DAYS ago (README "Delete and reject"), on the embedded
  store (``--data-dir``) or CouchDB (``--couchdb URL --couchdb-db NAME``).
- ``status`` (CouchDB): the database's sequence, the repair follower's
  position and lag, this site's id, journals left, and the replications the
  server reports for the database (README "Several sites"); ``--json``.

The CouchDB settings come from the server's option table: ``--couchdb``,
``--couchdb-db``, ``--couchdb-credentials``, ``--couchdb-ca`` and
``--config`` here, or ``DICOMWEB_COUCHDB*`` variables and the config file
(``couchdb-user``/``couchdb-password`` there or in the environment), read
exactly as the server reads them.
- ``orphans [--delete]``: list (or remove) files of the embedded store that
  no index row points to, which a crash between an index commit and the
  unlinks after it may leave (harmless: never served); on CouchDB, the QIDO
  key documents no current document owns (``--grace`` seconds between two
  scans, so a STOW in flight keeps its keys).

Safe while the server runs: the embedded store's writes are SQLite
transactions (serialised across processes), CouchDB's are revisioned.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .twistedtypes import IReactor

if TYPE_CHECKING:
    from .config import Settings
    from .store.couch import CouchStore
    from .store.sqlindex import EmbeddedIndex

DAY = 86400.0


def _embedded(data_dir: str) -> EmbeddedIndex:
    from .store.sqlindex import EmbeddedIndex

    index = EmbeddedIndex(data_dir)
    index.open()
    return index


def purge_rejected(args: argparse.Namespace) -> int:
    older_than = args.older_than * DAY
    settings = _settings(args)
    if settings.couchdb:
        async def purge(store: CouchStore) -> None:
            await store.open()
            _report(await store.purge_rejected(older_than))

        _on_couch(settings, purge)  # exits
    index = _embedded(settings.data_dir)
    try:
        _report(index.purge_rejected(older_than))
    finally:
        index.close()
    return 0


def _report(count: int) -> None:
    print(f"purged {count} rejected instances")


def orphans(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.couchdb:
        return _couch_orphans(settings, args)
    index = _embedded(settings.data_dir)
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


def _couch_orphans(settings: Settings, args: argparse.Namespace) -> int:
    """QIDO key documents left by a crash (see dicomweb.store.couchorphans)."""

    async def run(store: CouchStore) -> None:
        found = await store.orphan_keys(delete=args.delete, grace=args.grace)
        for doc_id in found:
            print(doc_id)
        print(f"{len(found)} orphan key documents" + (" deleted" if args.delete else ""), file=sys.stderr)

    _on_couch(settings, run)  # exits
    return 0  # not reached


def status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not settings.couchdb:
        print("status needs a CouchDB store (--couchdb URL)", file=sys.stderr)
        return 2

    async def show(store: CouchStore) -> None:
        found = await store.status()
        print(json.dumps(found, indent=2, sort_keys=True) if args.json else _status_text(found))

    _on_couch(settings, show)  # exits
    return 0  # not reached


def _status_text(found: dict[str, Any]) -> str:
    follower = found["follower"]
    lines = [f"database      {found['database']} (schema {found['schema']}, {found['doc_count']} documents)",
             f"site          {found['site']}",
             f"update_seq    {found['update_seq']}"]
    if follower.get("seq") is None:
        lines.append("follower      no position recorded (no frontend has followed this database yet)")
    else:
        age = time.time() - float(follower.get("at") or 0)
        lines.append(f"follower      at {follower['seq']} ({follower['lag']} changes behind, "
                     f"recorded {age:.0f}s ago by frontend {follower.get('frontend')})")
    lines.append(f"journals      {found['journals']['this_site']} of this site in flight or left, "
                 f"{found['journals']['other_sites']} replicated from other sites")
    if not found["replications"]:
        lines.append("replications  none reported for this database")
    for rep in found["replications"]:
        extra = ", ".join(f"{k} {rep[k]}" for k in ("changes_pending", "source_seq", "checkpointed_source_seq")
                          if rep.get(k) is not None)
        lines.append(f"replication   {rep['id']}: {rep['source']} -> {rep['target']} "
                     f"({'continuous' if rep['continuous'] else 'one-off'}, {rep.get('state') or 'state unknown'}"
                     f"{', ' + extra if extra else ''})")
    return "\n".join(lines)


def _settings(args: argparse.Namespace) -> Settings:
    """The store settings as the server reads them (option table: command
    line here, ``DICOMWEB_*`` environment, config file)."""
    from .config import load_settings

    given = {"couchdb": args.couchdb, "couchdb-db": args.couchdb_db, "couchdb-credentials": args.couchdb_credentials,
             "couchdb-ca": args.couchdb_ca, "config": args.config, "data-dir": args.data_dir}
    try:
        return load_settings(given)
    except ValueError as exc:
        raise SystemExit(f"dicomweb-admin: {exc}") from None


def _on_couch(settings: Settings, action: Callable[[CouchStore], Awaitable[None]]) -> None:
    """Run ``action(store)`` on the reactor, then exit."""
    from twisted.internet import task
    from twisted.internet.defer import ensureDeferred

    from .store.couch import CouchStore

    async def run(reactor: IReactor) -> None:
        # the reactor's own pool: the maintenance actions never store, so it stays idle
        user, password = settings.couchdb_login()
        store = CouchStore(settings.couchdb or "", settings.couchdb_db, reactor, reactor.getThreadPool(),
                           user=user, password=password, ca_file=settings.couchdb_ca)
        try:
            await action(store)
        finally:
            await store.close()

    task.react(lambda reactor: ensureDeferred(run(reactor)))  # exits the process


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dicomweb-admin", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="embedded store directory [default: ./dicomweb-data]")
    p.add_argument("--couchdb", help="CouchDB URL (purge-rejected, status)")
    p.add_argument("--couchdb-db", help="CouchDB database [default: dicomweb]")
    p.add_argument("--couchdb-credentials", help="file holding the CouchDB user:password")
    p.add_argument("--couchdb-ca", help="PEM CA bundle for an https:// CouchDB URL")
    p.add_argument("--config", help="the server's TOML config file (its store settings are used)")
    sub = p.add_subparsers(dest="command", required=True)
    purge = sub.add_parser("purge-rejected", help="delete instances rejected more than DAYS ago")
    purge.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    purge.set_defaults(run=purge_rejected)
    orphan = sub.add_parser("orphans", help="list files no index entry points to (embedded store), or QIDO key "
                                             "documents no current document owns (CouchDB store)")
    orphan.add_argument("--delete", action="store_true", help="remove them")
    orphan.add_argument("--grace", type=float, default=60.0,
                        help="CouchDB: seconds between the two scans (keys of a STOW in flight are left) [60]")
    orphan.set_defaults(run=orphans)
    state = sub.add_parser("status", help="replication and change-follower status of a CouchDB store")
    state.add_argument("--json", action="store_true", help="as JSON")
    state.set_defaults(run=status)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
