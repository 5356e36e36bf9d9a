"""Orthanc (Debian ``orthanc``, and ``orthanc-dicomweb`` for its DICOMweb
client) run by the tests as a real peer, with a private configuration."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from tests.dimse_helpers import free_port

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def dicomweb_plugin_installed() -> bool:
    return os.path.exists(DICOMWEB_PLUGIN)


class Orthanc:
    """Orthanc with a private configuration naming the server as its peer ``dicomweb``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.http_port, self.dicom_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, server_dimse_port: int | None = None, dicomweb_url: str | None = None) -> Orthanc:
        """Start it; ``server_dimse_port`` names the server as DIMSE modality
        ``dicomweb``, ``dicomweb_url`` as DICOMweb server ``dicomweb`` (through
        the Debian ``orthanc-dicomweb`` plugin)."""
        modalities = {} if server_dimse_port is None else {"dicomweb": ["DICOMWEB", "127.0.0.1", server_dimse_port]}
        config: dict[str, Any] = {
            "Name": "test-orthanc", "DicomAet": "ORTHANC", "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "StorageDirectory": str(self.base / "storage"),
            "IndexDirectory": str(self.base / "index"), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "SaveJobs": False, "Plugins": [],
            "DicomModalities": modalities,
        }
        if dicomweb_url is not None:
            config["Plugins"] = [DICOMWEB_PLUGIN]
            config["DicomWeb"] = {"Enable": True, "Servers": {"dicomweb": [dicomweb_url.rstrip("/") + "/"]}}
        path = self.base / "orthanc.json"
        path.write_text(json.dumps(config))
        with open(self.base / "orthanc.log", "wb") as log:
            self.proc = subprocess.Popen(["Orthanc", str(path)], cwd=self.base, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(self.url + "/system", timeout=2).raise_for_status()
                return self
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def post(self, path: str, body: Any) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = requests.post(self.url + path, data=data, timeout=60)
        response.raise_for_status()
        return response.json()
