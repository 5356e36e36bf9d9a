"""The Twisted services the server is handed, named once for the type checker.

Twisted describes a reactor as a set of zope interfaces, one per service
(time, TCP, threads, ...); the running reactor provides all of them, but an
annotation names one type. :class:`IReactor` extends the ones the server
uses, so a signature says "the reactor" once and mypy (with the mypy-zope
plugin) checks every call made with it: ``deferToThreadPool`` wants
``IReactorFromThreads``, ``deferLater`` and ``Deferred.addTimeout`` want
``IReactorTime``, ``Agent`` and treq want TCP, time and name resolution,
``reactor.stop`` is ``IReactorCore``.

No reactor class declares :class:`IReactor` itself: the process-wide
reactor gets the type through :func:`global_reactor` (a cast, since mypy sees
``twisted.internet.reactor`` as a module), and a test that passes a fake
reactor casts it the same way.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)

__all__ = ["IReactor", "global_reactor"]


class IReactor(IReactorCore, IReactorTCP, IReactorTime, IReactorPluggableNameResolver, IReactorThreads):
    """Every reactor service the server uses (``IReactorThreads`` includes
    ``IReactorFromThreads``). Declares nothing of its own."""


def global_reactor() -> IReactor:
    """The process-wide reactor (importing it installs the default one)."""
    from twisted.internet import reactor

    return cast(IReactor, reactor)
