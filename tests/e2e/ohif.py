"""The OHIF Viewer's prebuilt static site, served on its own loopback port.

``tests/ohif/node_modules/@ohif/app/dist`` (npm ``@ohif/app``, pinned by
``tests/ohif/package-lock.json``) is a ready static site built to be served at
``/``. :class:`OhifSite` serves it from a thread with python's
``http.server``, answers ``/app-config.js`` with a configuration written for
one DICOMweb server (:func:`app_config`), and falls back to ``index.html``
for the single-page app's own routes (``/viewer``, ``/?PatientName=..``).
The DICOMweb server listens on another port, so the browser does real CORS.

For investigation, serve OHIF against a running server by hand::

    python -m tests.e2e.ohif --server http://127.0.0.1:5985 --mode wadouri --port 3000

then open http://127.0.0.1:3000/ in a browser.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import threading
import urllib.parse
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OHIF_DIR = os.path.join(REPO, "tests", "ohif")
OHIF_DIST = os.path.join(OHIF_DIR, "node_modules", "@ohif", "app", "dist")
MODES = ("wadors", "wadouri")


def htj2k_progressive(chunk_size: int = 16384) -> dict[str, Any]:
    """OHIF's ``stackRetrieveOptions`` for progressive HTJ2K loading (README "HTJ2K").

    OHIF 3.13 sends one fixed Accept on frame requests, so the HTJ2K media
    type goes in the ``accept`` query parameter (PS3.18 8.3.3.1); 4.202 is
    the syntax its loader decodes from partial data. Two stages: the first
    ``chunk_size`` bytes of each frame (a ``Range``, drawn at a low
    resolution), then the rest (``bytes=N-``).
    """
    accept = urllib.parse.quote('multipart/related; type="image/jphc"; transfer-syntax=1.2.840.10008.1.2.4.202')
    return {
        "stages": [{"id": "lossySequential", "retrieveType": "singleFast"},
                   {"id": "finalSequential", "retrieveType": "singleFinal"}],
        "retrieveOptions": {
            "singleFast": {"rangeIndex": 0, "chunkSize": chunk_size, "decodeLevel": 2, "urlArguments": f"accept={accept}"},
            "singleFinal": {"rangeIndex": -1, "chunkSize": chunk_size, "urlArguments": f"accept={accept}"},
        },
    }


def data_source(server_url: str, mode: str, name: str = "dicomweb",
                stack_retrieve: dict[str, Any] | None = None) -> dict[str, Any]:
    """The OHIF DICOMweb data source for our server, in ``wadors`` or ``wadouri`` mode.

    This is the configuration README's "Use with OHIF" documents;
    ``stack_retrieve`` sets its ``stackRetrieveOptions`` (see :func:`htj2k_progressive`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    root = server_url.rstrip("/")
    return {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": name,
        "configuration": {
            "friendlyName": f"dicomweb ({mode})",
            "name": name,
            "qidoRoot": root,
            "wadoRoot": root,
            "wadoUriRoot": f"{root}/wado",
            "qidoSupportsIncludeField": True,
            "imageRendering": mode,
            # OHIF has no 'wadouri' thumbnail strategy: in wadouri mode the
            # thumbnails come from the server's /thumbnail resources instead.
            "thumbnailRendering": "wadors" if mode == "wadors" else "thumbnail",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "supportsReject": False,
            "dicomUploadEnabled": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
            **({"stackRetrieveOptions": stack_retrieve} if stack_retrieve else {}),
        },
    }


def app_config(server_url: str, mode: str, stack_retrieve: dict[str, Any] | None = None) -> str:
    """The text of ``app-config.js``: OHIF's defaults, one data source, no noise."""
    config = {
        "routerBasename": "/",
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        # Two cores here: more decoding workers only compete with the server.
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        # The "investigational use only" pop-up would cover the viewport.
        "investigationalUseDialog": {"option": "never"},
        "showErrorDetails": "always",
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [data_source(server_url, mode, stack_retrieve=stack_retrieve)],
    }
    return ("/** Written by tests/e2e/ohif.py for the dicomweb end-to-end tests. */\n"
            f"window.config = {json.dumps(config, indent=2)};\n")


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".json": "application/json",
        ".svg": "image/svg+xml",
        ".woff2": "font/woff2",
    }

    def __init__(self, request: Any, client_address: Any, server: _Server) -> None:
        super().__init__(request, client_address, server, directory=server.dist)

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/app-config.js":
            body = self.server.config_js.encode("utf-8")
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/javascript; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
            return
        local = self.translate_path(path)
        if not os.path.exists(local) and not posixpath.splitext(path)[1]:
            # A route of the single-page app (netlify's "/* /index.html 200").
            self.path = "/index.html"
        super().do_GET()

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dist: str, config_js: str, verbose: bool) -> None:
        self.dist = dist
        self.config_js = config_js
        self.verbose = verbose
        super().__init__(address, _Handler)


class OhifSite:
    """OHIF's ``dist/`` on ``http://127.0.0.1:PORT/`` (port 0: a free one), in a thread."""

    def __init__(self, server_url: str, mode: str, *, port: int = 0, dist: str = OHIF_DIST,
                 verbose: bool = False, stack_retrieve: dict[str, Any] | None = None) -> None:
        if not os.path.exists(os.path.join(dist, "index.html")):
            raise FileNotFoundError(f"no OHIF build at {dist}: run `npm ci --ignore-scripts` in tests/ohif")
        self.mode = mode
        self.config_js = app_config(server_url, mode, stack_retrieve)
        self._httpd = _Server(("127.0.0.1", port), dist, self.config_js, verbose)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"ohif-{mode}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> OhifSite:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)

    def __enter__(self) -> OhifSite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the OHIF Viewer against a dicomweb server")
    parser.add_argument("--server", default="http://127.0.0.1:5985", help="the DICOMweb server's URL")
    parser.add_argument("--mode", choices=MODES, default="wadors", help="OHIF imageRendering")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)
    with OhifSite(args.server, args.mode, port=args.port, verbose=True) as site:
        print(f"OHIF ({args.mode}) for {args.server} on {site.url}/  (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
