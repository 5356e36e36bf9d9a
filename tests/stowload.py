"""A STOW load for crash tests: clients storing in a loop, recording what
each STOW response acknowledged, and the checks that nothing acknowledged
was lost and nothing visible is half there."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

import pydicom
import requests
from pydicom.uid import generate_uid

from tests import dicomgen
from tests.httpclient import json_of, referenced, split_multipart, stow


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class StowLoad:
    """``clients`` threads, each storing ``per_request`` small instances per request.

    ``retry``: keep going through connection errors and 503s (a store that
    goes away and comes back); otherwise a client stops at the first
    connection error (the server itself died).
    """

    def __init__(self, url: str, clients: int = 3, per_request: int = 5, retry: bool = False) -> None:
        self.url = url
        self.per_request = per_request
        self.retry = retry
        self.acked: dict[str, tuple[str, str, bytes]] = {}
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def __enter__(self) -> StowLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self, worker: int) -> None:
        study, number = generate_uid(), 0
        while not self._stop.is_set():
            series = generate_uid()
            parts = []
            for _ in range(self.per_request):
                number += 1
                parts.append(dicomgen.ct_instance(study, series, number, size=32, seed=worker * 10000 + number))
            try:
                response = stow(self.url, parts)
            except requests.RequestException:
                if self.retry:
                    continue
                return  # the server died under us: this request was never acknowledged
            self.statuses.append(response.status_code)
            if response.status_code == 200:
                by_uid = {pydicom.dcmread(io.BytesIO(p), stop_before_pixels=True).SOPInstanceUID: p for p in parts}
                for sop in referenced(json_of(response)):
                    self.acked[sop] = (study, series, by_uid[sop])
            elif response.status_code == 503:
                assert response.headers.get("Retry-After")
                time.sleep(0.2)

    def check(self, url: str) -> None:
        """Every acknowledged instance is there, byte-identical; whatever is
        visible is whole (counts agree with what can be retrieved)."""
        for sop, (study, series, data) in self.acked.items():
            response = requests.get(f"{url}/studies/{study}/series/{series}/instances/{sop}")
            assert response.status_code == 200, sop
            assert split_multipart(response)[0][1] == data
        for study_json in requests.get(f"{url}/studies").json():
            study = study_json["0020000D"]["Value"][0]
            count = study_json["00201208"]["Value"][0]
            assert len(requests.get(f"{url}/studies/{study}/metadata").json()) == count
            parts = split_multipart(requests.get(f"{url}/studies/{study}"))
            assert len(parts) == count
            assert all(len(body) > 1000 for _, body in parts)
