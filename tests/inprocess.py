"""The real service in this process, over an in-memory network: tests in milliseconds.

:class:`InProcessServer` wires what ``twistd dicomweb`` wires (the options
parsed by :class:`dicomweb.tap.Options`, an :class:`EmbeddedStore` in a
temporary directory, and the site of :func:`dicomweb.web.site.build_site`:
the metered store, the app, the CORS and auth wrapper, the body-capping
request class) but runs it on a :class:`InProcessReactor`: a memory reactor
whose TCP connections are joined in memory (``twisted.test.iosim``), whose
clock only moves when a test moves it, and whose ``callFromThread`` runs at
once.  The thread pool is a :class:`SyncPool`, which runs each job at once
on the calling thread.  So a request runs from start to finish inside
:meth:`InProcessNetwork.run`, deterministically, with real HTTP/1.1 framing
on both sides (twisted.web's server, and treq over twisted.web's client).

:class:`Client` is a small synchronous client with the parts of the
``requests`` API the behaviour tests use (``get``, ``post``, ...; answers
with ``status_code``, ``headers``, ``content``, ``text``, ``json()``), so a
test reads the same whether it talks to this layer or to a server process.

The site is built by the same function as in :func:`dicomweb.tap.makeService`.
What this layer cannot show stays with the subprocess tests: twistd wiring,
crash safety, real clients and sockets (zero-copy ``sendfile``, aborted
connections: iosim's abort is a clean close), CouchDB.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import treq
from requests.structures import CaseInsensitiveDict
from treq.client import HTTPClient
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from dicomweb.store import Spool
from dicomweb.store.embedded import EmbeddedStore
from dicomweb.tap import Options
from dicomweb.twistedtypes import IReactor
from dicomweb.web.metrics import Metrics
from dicomweb.web.site import build_site

T = TypeVar("T")

#: Rounds of moving bytes and running due calls before a request that has
#: not finished is declared stuck (a finished request takes a handful).
MAX_ROUNDS = 10_000


class SyncPool:
    """A thread pool that runs every job at once, on the calling thread.

    Enough of :class:`twisted.python.threadpool.ThreadPool` for
    ``deferToThreadPool`` and for the store's and the authenticator's
    direct calls; with :class:`InProcessReactor` a pool job's result is
    delivered before ``deferToThreadPool`` returns.
    """

    started = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def callInThread(self, func: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        func(*args, **kwargs)

    def callInThreadWithCallback(self, onResult: Callable[[bool, object], object] | None,
                                 func: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        try:
            result = func(*args, **kwargs)
        except BaseException:
            if onResult is not None:
                onResult(False, Failure())
            return
        if onResult is not None:
            onResult(True, result)


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class _LiteralResolver:
    """Names are the in-memory network's addresses as they are (127.0.0.1)."""

    def resolveHostName(self, receiver: IResolutionReceiver, hostName: str, portNumber: int = 0,
                        addressTypes: object = None, transportSemantics: str = "TCP") -> IHostResolution:
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        receiver.addressResolved(IPv4Address("TCP", hostName, portNumber))
        receiver.resolutionComplete()
        return resolution


@implementer(IReactorPluggableNameResolver)
class InProcessReactor(MemoryReactorClock):
    """A memory reactor with a manual clock; "threads" call back at once.

    The clock starts at the wall-clock time, so that times in credentials
    (a token's ``exp``) mean what they say; it moves only when told to.
    """

    def __init__(self) -> None:
        super().__init__()
        self.advance(time.time())
        self.nameResolver = _LiteralResolver()

    def callFromThread(self, callable: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        callable(*args, **kwargs)

    def getThreadPool(self) -> SyncPool:
        return SyncPool()


class InProcessNetwork:
    """Joins the TCP connections made on ``reactor`` to the sites listening
    on it, in memory, and runs everything until a Deferred has fired."""

    def __init__(self, reactor: InProcessReactor) -> None:
        self.reactor = reactor
        self.sites: dict[tuple[str, int], Any] = {}
        self._pumps: list[iosim.IOPump] = []
        self._cooperator = task.Cooperator(scheduler=lambda work: reactor.callLater(0, work))
        self._connected = 0

    def listen(self, host: str, port: int, factory: Any) -> None:
        self.sites[(host, port)] = factory

    def _connect_new(self) -> bool:
        """Connect the client connections made since the last call."""
        new = self.reactor.tcpClients[self._connected:]
        connectors = self.reactor.connectors[self._connected:]
        self._connected = len(self.reactor.tcpClients)
        for (host, port, factory, _timeout, _bind), connector in zip(new, connectors, strict=True):
            server_factory = self.sites.get((host, port))
            if server_factory is None:
                factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError(host)))
                continue
            client_address = IPv4Address("TCP", "127.0.0.1", 40000 + len(self._pumps))
            server_address = IPv4Address("TCP", host, port)
            server = server_factory.buildProtocol(client_address)
            client = factory.buildProtocol(server_address)
            self._pumps.append(iosim.connect(
                server, iosim.FakeTransport(server, isServer=True, hostAddress=server_address,
                                            peerAddress=client_address),
                client, iosim.FakeTransport(client, isServer=False, hostAddress=client_address,
                                            peerAddress=server_address),
                greet=False))
        return bool(new)

    def _round(self) -> bool:
        """Move bytes once, run due calls; True if anything happened."""
        moved = self._connect_new()
        for pump in list(self._pumps):
            if pump.pump():
                moved = True
            if pump.clientIO.disconnected and pump.serverIO.disconnected:
                self._pumps.remove(pump)
        now = self.reactor.seconds()
        due = [c for c in self.reactor.getDelayedCalls() if c.getTime() <= now]
        self.reactor.advance(0)
        return moved or bool(due)

    def run(self, d: Deferred[T], let_time_pass: bool = False) -> T:
        """Run until ``d`` has fired; its result (or its exception, raised).

        The clock stands still: a request that waits for a timer (a timeout,
        a retry delay) is reported stuck, unless ``let_time_pass``, which
        moves the clock to the next timer whenever nothing else can happen.
        """
        with self._cooperating():
            return self._run(d, let_time_pass)

    @contextmanager
    def _cooperating(self) -> Iterator[None]:
        """Work given to Twisted's global cooperator (treq's request bodies,
        e.g. an OIDC introspection form) runs on this reactor meanwhile."""
        saved = task.cooperate
        task.cooperate = self._cooperator.cooperate
        try:
            yield
        finally:
            task.cooperate = saved

    def _run(self, d: Deferred[T], let_time_pass: bool) -> T:
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        for _ in range(MAX_ROUNDS):
            if outcome:
                break
            if self._round() or outcome:
                continue
            timers = self.reactor.getDelayedCalls()
            if not let_time_pass or not timers:
                raise AssertionError("in-process request stuck: nothing left to do and no answer")
            self.reactor.advance(min(c.getTime() for c in timers) - self.reactor.seconds())
        else:
            raise AssertionError(f"in-process request did not finish in {MAX_ROUNDS} rounds")
        self.settle()
        result = outcome[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result  # type: ignore[no-any-return]

    def settle(self) -> None:
        """Let what is left (connection close, access log) happen."""
        for _ in range(MAX_ROUNDS):
            if not self._round():
                return


@implementer(IBodyProducer)
class BodyProducer:
    """A request body given whole (bytes, text or a file), or as an iterator
    of byte strings, sent with chunked transfer coding as ``requests`` does
    (treq's default producer needs a cooperator)."""

    def __init__(self, body: Any) -> None:
        if isinstance(body, str):
            body = body.encode("utf-8")
        elif hasattr(body, "read"):
            body = body.read()
        self.pieces: Iterable[bytes] = [body] if isinstance(body, bytes) else body
        self.length = len(body) if isinstance(body, bytes) else UNKNOWN_LENGTH

    def startProducing(self, consumer: Any) -> Deferred[None]:  # an IConsumer
        for piece in self.pieces:
            consumer.write(piece)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Response:
    """An answer, with the ``requests.Response`` attributes tests read."""

    def __init__(self, url: str, status_code: int, headers: CaseInsensitiveDict[str], content: bytes) -> None:
        self.url = url
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    def json(self) -> Any:
        return json.loads(self.content)

    def raise_for_status(self) -> None:
        if not self.ok:
            raise AssertionError(f"{self.status_code} for {self.url}: {self.text[:500]}")

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"


class _Endpoints:
    """Plain TCP endpoints on the in-memory reactor (no name resolution)."""

    def __init__(self, reactor: InProcessReactor) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri: Any) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(self.reactor, uri.host.decode("ascii"), uri.port)


class Client:
    """Synchronous HTTP to an :class:`InProcessServer` (treq underneath)."""

    def __init__(self, server: InProcessServer) -> None:
        self.server = server
        agent = Agent.usingEndpointFactory(server.reactor, _Endpoints(server.reactor))
        self._agent = agent
        self._treq = HTTPClient(agent, data_to_body_producer=BodyProducer)

    def request(self, method: str, url: str, params: Any = None, headers: Mapping[str, str] | None = None,
                data: Any = None, auth: tuple[str, str] | None = None, let_time_pass: bool = False,
                raw: bool = False, **_ignored: Any) -> Response:
        """``url`` is a path (``/studies``) or a full URL on this server.
        Headers given as None are not sent (as with ``requests``).
        ``let_time_pass``: see :meth:`InProcessNetwork.run`. ``raw``: send
        exactly these headers and keep the body as it came (by default, as
        with ``requests``, ``Accept-Encoding: gzip`` is added and a gzip
        body is decoded)."""
        if url.startswith("/"):
            url = self.server.url + url
        if params:
            query = urllib.parse.urlencode(params, doseq=True)
            url += ("&" if "?" in url else "?") + query
        sent = {k: v for k, v in (headers or {}).items() if v is not None}
        if auth is not None:
            import base64

            sent["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        return self.server.network.run(ensureDeferred(self._request(method, url, sent, data, raw)), let_time_pass)

    async def _request(self, method: str, url: str, headers: dict[str, str], data: Any, raw: bool = False) -> Response:
        sent: dict[bytes | str, list[bytes | str]] = {k: [v] for k, v in headers.items()}
        response: Any
        if raw:
            response = await self._agent.request(
                method.encode(), url.encode(), Headers({k.encode(): [v.encode()] for k, v in headers.items()}),
                None if data is None else BodyProducer(data))
            content = await treq.content(response)
        else:
            response = await self._treq.request(method, url, headers=sent, data=data)
            content = await response.content()
        out: CaseInsensitiveDict[str] = CaseInsensitiveDict()
        for name, values in response.headers.getAllRawHeaders():
            if values == [b""] and name.lower() == b"content-encoding":
                continue  # left by the client's gzip decoder when nothing was encoded
            out[name.decode("latin-1")] = ", ".join(v.decode("latin-1") for v in values)
        return Response(url, response.code, out, content)

    def get(self, url: str, **kwargs: Any) -> Response:
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> Response:
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str, data: Any = None, **kwargs: Any) -> Response:
        return self.request("POST", url, data=data, **kwargs)

    def put(self, url: str, data: Any = None, **kwargs: Any) -> Response:
        return self.request("PUT", url, data=data, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Response:
        return self.request("DELETE", url, **kwargs)

    def options(self, url: str, **kwargs: Any) -> Response:
        return self.request("OPTIONS", url, **kwargs)


#: How request bodies are received: split into part files as they arrive
#: (what the embedded store asks for), or spooled whole into one temporary
#: file (what the CouchDB store asks for); STOW reads them by different paths.
BODY_SHAPES = ("parts", "whole")


class InProcessServer:
    """The service as ``twistd dicomweb ARGS`` builds it, with the embedded
    store in ``data_dir``, listening on 127.0.0.1:``port`` of the in-memory
    network; ``bodies`` is one of :data:`BODY_SHAPES`."""

    def __init__(self, data_dir: str, *args: str, port: int = 5985, bodies: str = "parts") -> None:
        options = Options()
        options.parseOptions(["--data-dir", data_dir, *args])
        self.settings = options.settings
        self.reactor = InProcessReactor()
        self.network = InProcessNetwork(self.reactor)
        self.pool = SyncPool()
        # the doubles stand in for the real reactor and thread pool
        reactor, pool = cast(IReactor, self.reactor), cast(ThreadPool, self.pool)
        self.store = EmbeddedStore(self.settings.data_dir, reactor, pool)
        self.metrics = Metrics()
        self.site = build_site(self.settings, self.store, reactor, pool, metrics=self.metrics,
                               spool=self._spool(bodies))
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.network.listen("127.0.0.1", port, self.site)
        self.network.run(ensureDeferred(self.store.open()))
        self.client = Client(self)

    def _spool(self, bodies: str) -> Spool:
        if bodies == "parts":
            return self.store.spool
        assert bodies == "whole", bodies
        return Spool(self.store.spool.directory)

    def close(self) -> None:
        self.network.run(ensureDeferred(self.store.close()))

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BODY_SHAPES", "Client", "InProcessNetwork", "InProcessReactor", "InProcessServer", "Response", "SyncPool"]
