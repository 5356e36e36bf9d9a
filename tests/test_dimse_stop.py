"""Stopping the server (SIGTERM) while C-STOREs are arriving.

A real server process receives instances from a slow pynetdicom client (it
pauses after each PDU it sends, so that a data set is always half-way across
when the signal comes).  The service stops the listener, waits for the
stores that reached the store, then aborts the associations.  Afterwards,
on the same data directory: every acknowledged instance is there with its
Pixel Data byte for byte, and every other one is either absent or complete,
never half-stored.  The policy is the bridge's, not the store's: the
embedded store runs it.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import evt

from tests.dicomgen import ct_instance
from tests.dimse_helpers import CT_STORAGE, EXPLICIT_LE, DimseServer, associate, c_get, identifier

#: Seconds the client waits after each P-DATA PDU it sends (256 KiB each).
PDU_PAUSE = 0.02


class SlowSender(threading.Thread):
    """Sends ``instances`` over one association, pausing after each PDU; the
    status of each C-STORE answered (None: no answer, the association ended)."""

    def __init__(self, port: int, instances: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.port, self.instances = port, instances
        self.statuses: list[int | None] = [None] * len(instances)
        self.acknowledged = threading.Semaphore(0)

    def run(self) -> None:
        handlers = [(evt.EVT_PDU_SENT, lambda _: time.sleep(PDU_PAUSE))]
        assoc = associate(self.port, [(CT_STORAGE, [EXPLICIT_LE])], handlers=handlers)
        # pynetdicom may wait this long for an answer on a connection the
        # server has aborted mid-message.
        assoc.dimse_timeout = 3
        try:
            for n, data in enumerate(self.instances):
                if not assoc.is_established:
                    return
                status = assoc.send_c_store(dcmread(io.BytesIO(data)))
                self.statuses[n] = int(status.Status) if "Status" in status else None
                self.acknowledged.release()
        except Exception:  # the association was aborted under us: the statuses so far stand
            return
        finally:
            if assoc.is_established:
                assoc.release()


def _stored(server: DimseServer, study: str) -> dict[str, bytes]:
    """SOP Instance UID -> Pixel Data of what the server holds for ``study``."""
    statuses, received = c_get(server.dimse_port, identifier("STUDY", StudyInstanceUID=study),
                               [(CT_STORAGE, [EXPLICIT_LE])])
    assert statuses[-1].Status in (0x0000, 0xA702, 0xB000), statuses[-1]
    return {sop: dcmread(io.BytesIO(data)).PixelData for sop, data in received.files.items()}


def _sop(data: bytes) -> str:
    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def test_sigterm_waits_for_stores_in_flight_and_leaves_nothing_half_stored(tmp_path: Path) -> None:
    data_dir, study, series = str(tmp_path / "data"), generate_uid(), generate_uid()
    instances = [ct_instance(study, series, n, size=1024, seed=n) for n in range(1, 31)]  # 2 MB each
    server = DimseServer(data_dir, str(tmp_path / "server.log"))
    server.start()
    try:
        sender = SlowSender(server.dimse_port, instances)
        sender.start()
        for _ in range(3):
            assert sender.acknowledged.acquire(timeout=60), "no C-STORE was answered"
        time.sleep(PDU_PAUSE * 3)  # the next data set is part-way across
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        # twistd shuts down, then ends with the signal it received.
        assert server.proc.wait(60) in (0, -signal.SIGTERM)
        sender.join(30)
        first_log = server.log()
    finally:
        server.stop()
    assert not sender.is_alive()
    assert "DIMSE listener stopped" in first_log and "Server Shut Down." in first_log
    assert "Traceback" not in first_log, first_log[-4000:]
    acknowledged = {_sop(instances[n]) for n, s in enumerate(sender.statuses) if s == 0}
    assert len(acknowledged) >= 3
    assert len(acknowledged) < len(instances), "the server stopped after the client had sent everything"
    refused = [s for s in sender.statuses if s not in (None, 0)]
    assert all(s == 0xA700 for s in refused), refused  # "out of resources: the server is stopping"

    with DimseServer(data_dir, str(tmp_path / "again.log")) as again:
        stored = _stored(again, study)
    originals: dict[str, Any] = {_sop(d): dcmread(io.BytesIO(d)).PixelData for d in instances}
    assert acknowledged <= set(stored)
    for sop, pixels in stored.items():
        assert pixels == originals[sop], "an instance was stored incomplete"
    spool = os.path.join(data_dir, "spool")
    leftovers = [n for n in os.listdir(spool) if n.endswith(".dcm")] if os.path.isdir(spool) else []
    assert leftovers == []
