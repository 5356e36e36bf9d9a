"""Several server processes on one listening socket: ``--workers N``.

One Python process runs one reactor thread, so it uses one core for the
HTTP side however many the machine has. With ``--workers N`` the process
twistd starts becomes a *supervisor*:

- it opens the listening socket itself, with the same endpoint description
  as a single server (``--port``: a port, ``tcp:``, ``ssl:``, ``unix:``, ...),
  and takes it off its own reactor: it never accepts on it;
- it runs the startup work once, before any worker exists: the store's open
  (schema creation or upgrade; the embedded store clears its spool; the
  CouchDB store repairs interrupted batches from their journals), and keeps
  that store open for the periodic maintenance (the CouchDB journal sweep
  every minute), which no worker does;
- it starts N worker processes (``python -c ... worker_main()``) that inherit
  the socket as file descriptor 3 and adopt it (``adoptStreamPort``); each
  serves HTTP exactly as a single server does, on the same store;
- it restarts a worker that dies, after 0.5 s doubling to 30 s while
  restarts keep failing within :data:`STABLE_AFTER` seconds;
- on SIGTERM/SIGINT it sends SIGTERM to every worker, each stops accepting,
  answers the requests in flight and writes their answers out
  (:func:`drain_requests`), closes its store and exits 0; then the
  supervisor closes the socket and exits as twistd always does after a
  clean stop on a signal: by that signal (systemd counts SIGTERM as success).

Why an inherited socket rather than ``SO_REUSEPORT``: one socket has one
accept queue, so a connection waiting in it is taken by whichever worker is
free first (a busy worker is not in ``epoll_wait``), while ``SO_REUSEPORT``
hashes each connection to one worker's queue whether that worker is busy or
not, and the connections queued on a worker that dies are reset. The socket
also stays open while a worker restarts, so no connection is refused
meanwhile. TLS: each worker builds the endpoint as a single server would but
with :class:`AdoptingReactor`, whose ``listenSSL`` wraps the adopted socket
in Twisted's TLS protocol exactly as the reactor's own ``listenSSL`` does
(same certificate options, ALPN included). The zero-copy ``os.sendfile``
path needs the connection's TCP socket, which an adopted port's connections
are (``tcp.Server``), so plain HTTP keeps it.

DIMSE (``--dimse-port``) runs in every worker, on one socket the supervisor
opens, as HTTP does: a process receives at most about one core's worth of
C-STOREs (pynetdicom's threads and the PDU decoding share the interpreter
lock), so parallel associations need processes. ``--dimse-max-associations``
is then a limit per worker. Associations requested while a worker restarts
go to another, or wait in the socket's queue.

Logs: a worker writes its log events as JSON records to its standard output;
the supervisor publishes them in its own log (file or stdout, as twistd was
told), with the worker's number in the system field (``[w1 ...]``).
Its standard error (a crash's traceback) is logged line by line. A worker
whose supervisor disappears (even by SIGKILL) sees its standard input close
and stops as if told to.

Metrics: see :mod:`dicomweb.web.metrics` (one directory of value files,
created and removed here).
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any

from twisted.application import service
from twisted.internet import abstract, defer, endpoints, error, fdesc, main, protocol, task, tcp
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.logger import (
    Logger,
    eventFromJSON,
    globalLogBeginner,
    globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .config import Settings
from .twistedtypes import IReactor
from .web.metrics import MULTIPROC_ENV, InFlight

log = Logger()

#: The inherited listening sockets' descriptors in a worker (DIMSE: worker 0).
HTTP_FD = 3
DIMSE_FD = 4
#: A worker that ran this many seconds before it died is restarted after the
#: shortest delay again.
STABLE_AFTER = 10.0
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
#: Seconds the supervisor waits for its workers to stop before SIGKILL; more
#: than a worker's own drain (:data:`DRAIN_SECONDS` + :data:`FLUSH_SECONDS`).
STOP_SECONDS = 45.0
_RS = b"\x1e"  # record separator of twisted.logger's JSON log files


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process is told on its standard input."""

    index: int
    settings: Settings
    dimse: bool = False  # the DIMSE socket is descriptor DIMSE_FD


# -- the supervisor --------------------------------------------------------------


class Supervisor(service.Service):
    """The process twistd runs with ``--workers N`` (module docstring)."""

    name = "dicomweb-supervisor"

    def __init__(self, settings: Settings, reactor: IReactor) -> None:
        self.settings = settings
        self.reactor: Any = reactor  # IReactorProcess too, which IReactor does not declare
        self.port: Any = None
        self.dimse_socket: socket.socket | None = None
        self.store: Any = None
        self.pool: ThreadPool | None = None
        self.metrics_dir: str | None = None
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self._failures: dict[int, int] = {}
        self._restarts: dict[int, Any] = {}  # index -> the DelayedCall of its restart

    def privilegedStartService(self) -> None:
        """Open the sockets, before twistd drops privileges (ports below
        1024) and failing the start at once when one cannot be had."""
        from .tap import endpoint_description

        super().privilegedStartService()
        endpoint = endpoints.serverFromString(self.reactor, endpoint_description(self.settings.port))
        listening = endpoint.listen(_SharedSocket())
        results: list[Any] = []
        listening.addBoth(results.append)  # tcp:, ssl:, unix: listen at once
        if not results:
            raise RuntimeError(f"--workers: the endpoint {self.settings.port!r} does not listen at once")
        if isinstance(results[0], Failure):
            results[0].raiseException()
        self.port = results[0]
        self.port.stopReading()  # only the workers accept
        if self.settings.dimse_port:
            self.dimse_socket = _dimse_socket(self.settings.dimse_port)

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()
        d = ensureDeferred(self._start())
        d.addErrback(self._failed)

    async def _start(self) -> None:
        from .tap import build_store

        # The startup work, once, before any worker exists.
        self.pool = ThreadPool(minthreads=0, maxthreads=2, name="dicomweb-supervisor")
        self.pool.start()
        self.store = build_store(self.settings, self.reactor, self.pool)
        await self.store.open()
        self.metrics_dir = tempfile.mkdtemp(prefix="dicomweb-metrics-")
        log.info("starting {n} worker processes on port {port}", n=self.settings.workers,
                 port=self.port.getHost().port if hasattr(self.port.getHost(), "port") else self.settings.port)
        for index in range(self.settings.workers):
            self._spawn(index)

    def _failed(self, failure: Failure) -> None:
        log.failure("cannot start the workers", failure)
        self.reactor.stop()

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self.stopping:
            return
        dimse = self.dimse_socket is not None
        settings = self.settings if dimse else replace(self.settings, dimse_port=None)
        worker = _Worker(self, index, WorkerConfig(index, settings, dimse))
        fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r", HTTP_FD: self.port.fileno()}
        if dimse and self.dimse_socket is not None:
            fds[DIMSE_FD] = self.dimse_socket.fileno()
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, MULTIPROC_ENV: self.metrics_dir or "",
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        args = [sys.executable, "-c", "from dicomweb.workers import worker_main; worker_main()"]
        self.reactor.spawnProcess(worker, sys.executable, args, env=env, childFDs=fds)
        self.workers[index] = worker
        log.info("worker {index} started (pid {pid})", index=index, pid=worker.pid)

    def ended(self, worker: _Worker, status: Failure) -> None:
        """A worker process is gone (any reason)."""
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self.metrics_dir and worker.pid:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid, self.metrics_dir)
        code = getattr(status.value, "exitCode", None)
        sig = getattr(status.value, "signal", None)
        if self.stopping:
            log.info("worker {index} (pid {pid}) stopped (exit code {code})", index=worker.index, pid=worker.pid,
                     code=code)
            return
        lived = time.monotonic() - worker.started
        failures = 0 if lived >= STABLE_AFTER else self._failures.get(worker.index, 0) + 1
        self._failures[worker.index] = failures
        delay = min(FIRST_DELAY * 2 ** max(failures - 1, 0), MAX_DELAY)
        log.warn("worker {index} (pid {pid}) exited (code {code}, signal {signal}); restarting in {delay:.1f}s",
                 index=worker.index, pid=worker.pid, code=code, signal=sig, delay=delay)
        self._restarts[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        waits = [w.done for w in self.workers.values()]
        for worker in list(self.workers.values()):
            worker.signal("TERM")
        kill = self.reactor.callLater(STOP_SECONDS, self._kill_all)
        d: Deferred[Any] = DeferredList(waits, consumeErrors=True)
        d.addBoth(lambda _: kill.cancel() if kill.active() else None)
        d.addBoth(lambda _: ensureDeferred(self._close()))
        return d

    def _kill_all(self) -> None:
        for worker in list(self.workers.values()):
            log.warn("worker {index} (pid {pid}) did not stop: killing it", index=worker.index, pid=worker.pid)
            worker.signal("KILL")

    async def _close(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
        if self.dimse_socket is not None:
            self.dimse_socket.close()
        if self.store is not None:
            await self.store.close()
        if self.pool is not None:
            self.pool.stop()
        if self.metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("all workers stopped")


def _dimse_socket(address: str) -> socket.socket:
    """The DIMSE listening socket (``--dimse-port``), bound as pynetdicom
    binds it, for worker 0 to serve."""
    from .dimse.peers import bind

    host, port = bind(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


class _SharedSocket(protocol.Factory):
    """The factory of the supervisor's listening port, which never accepts."""

    noisy = False

    def logPrefix(self) -> str:
        return "Workers' shared socket"


class _Worker(protocol.ProcessProtocol):
    """One worker process, seen from the supervisor: its configuration on
    its standard input (left open: its lifeline), its log events from its
    standard output, its standard error as log lines."""

    def __init__(self, supervisor: Supervisor, index: int, config: WorkerConfig) -> None:
        self.supervisor, self.index, self.config = supervisor, index, config
        self.pid = 0
        self.started = time.monotonic()
        self.done: Deferred[None] = Deferred()
        self._records = b""
        self._errors = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid or 0
        data = pickle.dumps(self.config)
        self.transport.write(struct.pack("!I", len(data)) + data)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except Exception:
            return

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self._records = self._relay_records(self._records + data)
        elif fd == 2:
            self._errors = self._relay_errors(self._errors + data)

    def _relay_records(self, buffer: bytes) -> bytes:
        *complete, rest = buffer.split(_RS)
        for record in complete:
            if record.strip():
                self._publish(record)
        if rest.endswith(b"\n"):  # a record is written with its newline at once
            self._publish(rest)
            return b""
        return rest

    def _publish(self, record: bytes) -> None:
        try:
            event = eventFromJSON(record.decode("utf-8"))
        except ValueError:
            log.warn("worker {index}: unreadable log record", index=self.index)
            return
        level = event.get("log_level")
        system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
        event["log_system"] = f"w{self.index} {system}"
        globalLogPublisher(event)

    def _relay_errors(self, buffer: bytes) -> bytes:
        *lines, rest = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                log.warn("worker {index} stderr: {line}", index=self.index,
                         line=line.decode("utf-8", "replace"))
        return rest

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.ended(self, reason)
        self.done.callback(None)


# -- the worker ------------------------------------------------------------------

#: Seconds a stopping worker waits for the requests in flight to be answered,
#: then for their answers to be written out.
DRAIN_SECONDS = 30.0
FLUSH_SECONDS = 5.0


async def _drain(in_flight: InFlight, reactor: Any) -> None:
    if in_flight.count:
        log.info("waiting for {n} requests in flight", n=in_flight.count)
        try:
            await in_flight.idle().addTimeout(DRAIN_SECONDS, reactor)
        except defer.TimeoutError:
            log.warn("stopping with {n} requests unanswered", n=in_flight.count)
    # A finished request's answer may still sit in its connection's buffer,
    # and the reactor drops the connections it stops with unwritten: close
    # each accepted connection (after its buffer is written) and wait.
    for connection in _accepted(reactor):
        connection.loseConnection()
    deadline = reactor.seconds() + FLUSH_SECONDS
    while _accepted(reactor) and reactor.seconds() < deadline:
        await task.deferLater(reactor, 0.02)


def _accepted(reactor: Any) -> list[tcp.Server]:
    return [s for s in {*reactor.getReaders(), *reactor.getWriters()} if isinstance(s, tcp.Server)]


def drain_requests(in_flight: InFlight, reactor: Any) -> Deferred[None]:
    """What a stopping worker does once it no longer accepts: answer the
    requests in flight (:data:`DRAIN_SECONDS` at most), write out the answers
    and close the connections (:data:`FLUSH_SECONDS` at most)."""
    return ensureDeferred(_drain(in_flight, reactor))



class AdoptingReactor:
    """The reactor a worker's HTTP endpoint listens with: every ``listen*``
    adopts the inherited socket instead of binding a new one (TLS: wrapped
    as the reactor's own ``listenSSL`` wraps a TCP port). Everything else is
    the real reactor's."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _adopt(self, factory: Any) -> Any:
        with socket.socket(fileno=os.dup(self._fd)) as probe:
            family = probe.family
        port = self._reactor.adoptStreamPort(self._fd, family, factory)
        os.close(self._fd)  # adoptStreamPort keeps a duplicate
        return port

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        return self._adopt(factory)

    def listenUNIX(self, address: Any, factory: Any, *args: Any, **kwargs: Any) -> Any:
        return self._adopt(factory)

    def adoptStreamPort(self, fd: int, family: Any, factory: Any) -> Any:
        return self._adopt(factory)

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        adopted = self._adopt(TLSMemoryBIOFactory(contextFactory, False, factory))
        adopted._type = "TLS"  # as the reactor's listenSSL names it in logs
        return adopted


class _Lifeline(abstract.FileDescriptor):
    """The worker's standard input, the supervisor's end of a pipe: when it
    closes, the supervisor is gone, and the worker stops."""

    def __init__(self, reactor: Any, fd: int) -> None:
        super().__init__(reactor)
        self._fd = fd
        fdesc.setNonBlocking(fd)

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Any:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return None
        return None if data else main.CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:
        # A pipe whose writer is gone polls as hung up, without data: the
        # reactor reports that as a clean close, never calling doRead.
        super().connectionLost(reason)
        if reason.check(error.ConnectionDone):
            log.info("the supervising process is gone: stopping")
            self.reactor.callLater(0, _stop, self.reactor)  # type: ignore[attr-defined]


def _stop(reactor: Any) -> None:
    try:
        reactor.stop()
    except error.ReactorNotRunning:  # already stopping (told by a signal too)
        return


def _read_config(fd: int) -> WorkerConfig:
    def exactly(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = os.read(fd, n - len(out))
            if not chunk:
                raise SystemExit("dicomweb worker: no configuration on standard input")
            out += chunk
        return out

    (length,) = struct.unpack("!I", exactly(4))
    config = pickle.loads(exactly(length))
    if not isinstance(config, WorkerConfig):
        raise SystemExit("dicomweb worker: bad configuration")
    return config


def worker_main() -> None:
    """A worker process (started by :class:`Supervisor` only)."""
    config = _read_config(0)
    out = open(1, "w", encoding="utf-8", buffering=1, closefd=False)
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(out)], redirectStandardIO=False)
    from .tap import build_service
    from .twistedtypes import global_reactor

    reactor: Any = global_reactor()
    dimse = socket.socket(fileno=DIMSE_FD) if config.dimse else None
    server = build_service(config.settings, reactor, worker=config.index,
                           listen_reactor=AdoptingReactor(reactor, HTTP_FD), dimse_socket=dimse)
    reactor.addReader(_Lifeline(reactor, 0))
    # Ctrl-C in a terminal reaches the whole process group: the supervisor
    # alone decides, and stops the workers with SIGTERM.
    reactor.callWhenRunning(signal.signal, signal.SIGINT, signal.SIG_IGN)
    reactor.callWhenRunning(server.startService)
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.run()


__all__ = ["AdoptingReactor", "Supervisor", "WorkerConfig", "worker_main"]
