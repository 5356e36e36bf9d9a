"""Reading a CouchDB database's ``_changes`` feed: the one place that does.

``_changes?since=S`` lists the documents written after position ``S`` by
anyone (every frontend, and every replication into this database), each
once, at its latest revision, in the order this database recorded them.
Positions are opaque (an integer on pouchdb-server and single-node CouchDB
1.x, a string on CouchDB 2+); they are kept and sent back exactly as
received, never compared or computed with.

``feed=longpoll`` makes the request wait until there is a change after
``S`` (or the timeout passes): one such request per follower, however many
clients wait on what it learns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .couchhttp import CouchClient

#: The position before every change.
START: Any = 0


@dataclass(frozen=True)
class ChangesPage:
    """Rows ``{"id", "seq", "deleted"?}`` in feed order, and where to go on from."""

    rows: list[dict[str, Any]]
    last_seq: Any

    def ids(self, prefix: str) -> list[tuple[str, Any]]:
        """(id, seq) of the rows of live documents whose id starts with ``prefix``."""
        return [(r["id"], r["seq"]) for r in self.rows if r.get("id", "").startswith(prefix) and not r.get("deleted")]


async def changes_since(client: CouchClient, since: Any, *, limit: int = 500,
                        wait: float | None = None, all_revisions: bool = False) -> ChangesPage:
    """The changes after ``since``, at most ``limit``; with ``wait``, a
    long-poll that answers as soon as there is one, or after ``wait`` seconds
    with none. A long-poll is not retried (its caller loops anyway) and its
    running out is not logged as an outage (pouchdb-server 4.2 ignores
    ``timeout`` and holds the request while nothing changes: the caller then
    gets StoreUnavailable after ``wait`` + the client's timeout). With
    ``all_revisions`` (``style=all_docs``) each row's ``changes`` lists every
    leaf revision of the document: more than one means replication left
    conflicting revisions (or deleted branches of a conflict resolved
    earlier)."""
    params: dict[str, Any] = {"since": since if isinstance(since, str) else str(since), "limit": limit}
    if all_revisions:
        params["style"] = "all_docs"
    if wait is not None:
        params["feed"] = "longpoll"
        params["timeout"] = int(wait * 1000)
    result = await client.request("GET", "_changes", params=params, retry=wait is None, quiet=wait is not None,
                                  timeout=client.timeout + (wait or 0))
    rows: list[dict[str, Any]] = result.get("results", [])
    return ChangesPage(rows, result.get("last_seq", since))
