"""kill -9 during a STOW load loses nothing acknowledged and leaves nothing half there."""

from __future__ import annotations

from tests.server import ServerProcess
from tests.stowload import StowLoad, wait_for


def test_kill_9_during_stow_keeps_every_acknowledged_instance(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    with StowLoad(fresh_server.url) as load:
        wait_for(lambda: len(load.acked) >= 60, 20)
        fresh_server.kill()
    fresh_server.start()
    load.check(fresh_server.url)
