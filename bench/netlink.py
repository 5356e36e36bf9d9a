"""A slow network link on loopback: a TCP proxy that adds latency and limits bandwidth.

Used by the viewer benchmark to put a server "behind" a WAN without root or
netem. Every connection accepted on ``listen_port`` is forwarded to
``target``; bytes in each direction are delivered ``rtt / 2`` after they
were read, and no faster than ``mbit`` megabits per second for all
connections together in that direction (one shared link, like a site's
uplink). TCP-level, so TLS and HTTP/2 pass through untouched.

    with NetLink(("127.0.0.1", 5985), rtt_ms=50, mbit=100) as link:
        ...  # clients connect to 127.0.0.1:link.port

Runs its own asyncio loop in a thread. At 100 Mbit/s (12.5 MB/s) the proxy
costs a few percent of a core.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable

CHUNK = 64 * 1024


class _Direction:
    """One direction of the link: a shared serialiser of bytes at ``rate``."""

    def __init__(self, delay: float, rate: float | None) -> None:
        self.delay = delay
        self.rate = rate  # bytes per second, None: unlimited
        self.free_at = 0.0  # when the link has sent everything queued so far

    def due(self, size: int, now: float) -> float:
        """When ``size`` bytes read at ``now`` arrive at the other end."""
        if self.rate is None:
            return now + self.delay
        start = max(now, self.free_at)
        self.free_at = start + size / self.rate
        return self.free_at + self.delay


class NetLink:
    def __init__(self, target: tuple[str, int], rtt_ms: float = 0, mbit: float | None = None,
                 listen_port: int = 0) -> None:
        self.target = target
        rate = mbit * 1e6 / 8 if mbit else None
        self.up = _Direction(rtt_ms / 2000, rate)  # client -> server
        self.down = _Direction(rtt_ms / 2000, rate)  # server -> client
        self._listen_port = listen_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="netlink", daemon=True)
        self.bytes_down = 0

    def start(self) -> NetLink:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self._listen_port)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> NetLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _connection(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        for writer in (client_w, server_w):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(self._pump(client_r, server_w, self.up, None),
                             self._pump(server_r, client_w, self.down, self._count_down),
                             return_exceptions=True)

    def _count_down(self, size: int) -> None:
        self.bytes_down += size

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Direction,
                    count: Callable[[int], None] | None) -> None:
        """Copy ``reader`` to ``writer``, each chunk delivered when the link says.

        Chunks are queued with their due time and written in order by a
        second task, so reading goes on while earlier bytes are "in flight"
        (the link holds up to one bandwidth-delay product, as a real one does)."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(queue, writer, count))
        try:
            while data := await reader.read(CHUNK):
                await queue.put((link.due(len(data), time.monotonic()), data))
        except (ConnectionError, OSError):
            pass
        finally:
            await queue.put(None)
            await _quietly(sender)

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter,
                    count: Callable[[int], None] | None) -> None:
        try:
            while (item := await queue.get()) is not None:
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                if count is not None:
                    count(len(data))
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except (ConnectionError, OSError, RuntimeError):
                pass


async def _quietly(task: Awaitable[None]) -> None:
    try:
        await task
    except (ConnectionError, OSError, asyncio.CancelledError):
        pass
