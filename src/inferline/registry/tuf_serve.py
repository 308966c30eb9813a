"""Serve a TUF repository's `metadata/` and `targets/` folders over plain HTTP, and take the fleet's
telemetry uploads (POST /v1/telemetry) into the registry's dataset.

TUF makes the transport untrusted on purpose: every file is verified by the client against signed
metadata, so a static file server (and any CDN or mirror in front of it) is enough. Only those two folders
are served, so a keys folder placed inside the repository by mistake is never exposed. Uploads are
acknowledged only once they are committed to the database, which is what lets devices delete them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from inferline.registry.dataset import Dataset, DatasetError, TelemetryBatchError, parse_batch
from inferline.registry.tuf_repo import TufRepositoryError

_SERVED_PREFIXES = ("/metadata/", "/targets/")
TELEMETRY_PATH = "/v1/telemetry"
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
"""A full batch of records is far smaller; anything bigger is refused before it is read."""


class _RegistryHTTPServer(ThreadingHTTPServer):
    """The HTTP server with the dataset uploads go to (None: uploads are refused)."""

    def __init__(self, address: tuple[str, int], handler: Any, dataset: Dataset | None) -> None:
        super().__init__(address, handler)
        self.dataset = dataset


class _RepositoryHandler(SimpleHTTPRequestHandler):
    def do_POST(self) -> None:
        if self.path != TELEMETRY_PATH:
            self._send_json(404, {"error": f"nothing to POST at {self.path}: uploads go to {TELEMETRY_PATH}"})
            return
        dataset = cast(_RegistryHTTPServer, self.server).dataset
        if dataset is None:
            self._send_json(404, {"error": "this repository server takes no telemetry uploads"})
            return
        length_header = self.headers.get("Content-Length", "")
        if not length_header.isdigit():
            self.close_connection = True
            self._send_json(
                411, {"error": "send the upload with a Content-Length header (no chunked bodies)"}
            )
            return
        length = int(length_header)
        if length > MAX_UPLOAD_BYTES:
            self.close_connection = True  # the unread body must not be parsed as the next request
            self._send_json(
                413, {"error": f"upload of {length} bytes exceeds {MAX_UPLOAD_BYTES}: send smaller batches"}
            )
            return
        try:
            result = dataset.store(parse_batch(self.rfile.read(length)))
        except DatasetError as error:
            # A malformed batch is the device's fault (400); a database failure is worth retrying (503).
            status = 400 if isinstance(error, TelemetryBatchError) else 503
            self._send_json(status, {"error": str(error)})
            return
        self._send_json(200, asdict(result))

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_head(self) -> Any:
        if not self.path.startswith(_SERVED_PREFIXES) or self.path.endswith("/"):
            # No directory listings either: clients know every path from signed metadata.
            self.send_error(404, "only files under /metadata/ and /targets/ are served")
            return None
        return super().send_head()

    def log_message(self, format: str, *args: Any) -> None:
        # Devices poll every few seconds; a line per request would drown the publisher's log.
        return


@dataclass
class RepositoryServer:
    """A running repository server; `url` is the base for `metadata/` and `targets/`."""

    httpd: _RegistryHTTPServer
    thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def _make_server(repo_dir: Path, host: str, port: int, dataset: Dataset | None) -> _RegistryHTTPServer:
    if not (repo_dir / "metadata" / "root.json").is_file():
        raise TufRepositoryError(
            f"{repo_dir} has no metadata/root.json; create the repository first (TufRepository.create)"
        )
    handler = partial(_RepositoryHandler, directory=str(repo_dir))
    return _RegistryHTTPServer((host, port), handler, dataset)


def start_repository_server(
    repo_dir: Path, host: str = "127.0.0.1", port: int = 0, dataset: Dataset | None = None
) -> RepositoryServer:
    """Serve in a background thread (port 0 picks a free port), with uploads stored in `dataset` when
    given; call `close()` when done."""
    httpd = _make_server(repo_dir, host, port, dataset)
    # A short poll interval makes close() return promptly (tests, agent shutdown); it costs no requests.
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="tuf-repository-server", daemon=True
    )
    thread.start()
    return RepositoryServer(httpd, thread)


def serve_repository(
    repo_dir: Path, host: str = "127.0.0.1", port: int = 8081, dataset: Dataset | None = None
) -> None:
    """Serve in the foreground until interrupted (`inferline registry serve`)."""
    with _make_server(repo_dir, host, port, dataset) as httpd:
        httpd.serve_forever()
