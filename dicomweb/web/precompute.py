"""Encoding new instances' frames after STOW (``--precompute htj2k``).

After a STOW answer is decided, the stored instances are queued here; one
worker at a time encodes their frames (HTJ2K lossless RPCL, the codestream
4.201 and 4.202 share) in the service's thread pool and puts them in the
derived frame cache, so that a viewer's first look at a new study finds them
ready. The STOW answer never waits: work starts on a later reactor turn. The
queue is bounded (:data:`MAX_QUEUE` instances); past that, instances are not
precomputed (they are encoded on first request instead) and counted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..dicom import pixels, transcode
from .wado import InstancePixels, Wado, derived_family

log = Logger()

#: Instances waiting at most; a 1,000-instance STOW keeps the first ones.
MAX_QUEUE = 512
TARGETS = {"htj2k": pixels.HTJ2K_RPCL}


class Precompute:
    def __init__(self, wado: Wado, kind: str) -> None:
        self.wado = wado
        self.target = TARGETS[kind]
        self.queue: deque[tuple[str, str, str]] = deque()
        self.dropped = 0
        self._running = False
        self._idle: list[Deferred[None]] = []

    def submit(self, instances: Iterable[tuple[str, str, str]]) -> None:
        """Queue (study, series, SOP instance) UIDs; returns at once."""
        if self.wado.derived is None:
            return
        for uids in instances:
            if len(self.queue) >= MAX_QUEUE:
                self.dropped += 1
                continue
            self.queue.append(uids)
        if self.queue and not self._running:
            self._running = True
            self.wado.reactor.callLater(0, self._start)

    def idle(self) -> Deferred[None]:
        """Fires when the queue is empty and no instance is being encoded."""
        d: Deferred[None] = Deferred()
        if not self._running:
            d.callback(None)
        else:
            self._idle.append(d)
        return d

    def _start(self) -> None:
        Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        try:
            while self.queue:
                study, series, sop = self.queue.popleft()
                try:
                    await self._one(study, series, sop)
                except Exception:
                    log.failure("precomputing the frames of an instance failed")
        finally:
            self._running = False
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    async def _one(self, study: str, series: str, sop: str) -> None:
        cache = self.wado.derived
        records = await self.wado.store.instances(study, series, sop)
        if cache is None or not records:
            return  # deleted meanwhile
        source = InstancePixels(self.wado, records[0])
        if not source.has_pixels() or source.stored == self.target:
            return
        metadata = await source.metadata()
        if not transcode.can_transcode(source.stored, self.target, metadata):
            return
        for index in range(await source.frame_count()):
            key = cache.key(source.record, derived_family(self.target), index)
            if await self.wado.cpu(cache.has, key):
                continue
            try:
                data = await source.derive(index, self.target)
            except pixels.PixelError as exc:
                log.info("not precomputing an instance's frames: {reason}", reason=exc.reason)
                return
            await self.wado.cpu(cache.put, key, data)
            self.wado.count_derived("precomputed")
