"""Run the real server (``twistd -n dicomweb``) as a child process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PORT_RE = re.compile(r"Site (?:\(TLS\) )?starting on (\d+)")


class ChildProcess:
    """A test service in a child process: its log, kill -9, clean stop."""

    log_path: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Any:
        raise NotImplementedError

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fp:
                return fp.read()
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """``kill -9``: no clean shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ServerProcess(ChildProcess):
    """``twistd -n dicomweb`` on a free loopback port, with its own log file."""

    #: "https" (and ``verify`` = the CA file) when ``extra`` holds an ssl: --port.
    scheme = "http"
    verify: str | bool = True

    def __init__(self, data_dir: str, log_path: str, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra = list(extra)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> ServerProcess:
        if os.path.exists(self.log_path):
            os.unlink(self.log_path)
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", f"--logfile={self.log_path}", "dicomweb",
                "--port", "tcp:0:interface=127.0.0.1", "--data-dir", self.data_dir, *self.extra]
        env = {**os.environ, "PYTHONPATH": REPO, **self.env}
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                stderr = self.proc.stderr.read() if self.proc.stderr is not None else b""
                raise RuntimeError(f"server exited: {stderr.decode()[-2000:]}\n{self.log()[-3000:]}")
            match = _PORT_RE.search(self.log())
            if match:
                self.port = int(match.group(1))
                requests.get(self.url + "/health", timeout=5, verify=self.verify).raise_for_status()
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("server did not start:\n" + self.log()[-3000:])

