"""Serve a TUF repository's `metadata/` and `targets/` folders over plain HTTP.

TUF makes the transport untrusted on purpose: every file is verified by the client against signed
metadata, so a static file server (and any CDN or mirror in front of it) is enough. Only those two folders
are served, so a keys folder placed inside the repository by mistake is never exposed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from inferline.registry.tuf_repo import TufRepositoryError

_SERVED_PREFIXES = ("/metadata/", "/targets/")


class _RepositoryHandler(SimpleHTTPRequestHandler):
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

    httpd: ThreadingHTTPServer
    thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def _make_server(repo_dir: Path, host: str, port: int) -> ThreadingHTTPServer:
    if not (repo_dir / "metadata" / "root.json").is_file():
        raise TufRepositoryError(
            f"{repo_dir} has no metadata/root.json; create the repository first (TufRepository.create)"
        )
    handler = partial(_RepositoryHandler, directory=str(repo_dir))
    return ThreadingHTTPServer((host, port), handler)


def start_repository_server(repo_dir: Path, host: str = "127.0.0.1", port: int = 0) -> RepositoryServer:
    """Serve in a background thread (port 0 picks a free port); call `close()` when done."""
    httpd = _make_server(repo_dir, host, port)
    # A short poll interval makes close() return promptly (tests, agent shutdown); it costs no requests.
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="tuf-repository-server", daemon=True
    )
    thread.start()
    return RepositoryServer(httpd, thread)


def serve_repository(repo_dir: Path, host: str = "127.0.0.1", port: int = 8081) -> None:
    """Serve in the foreground until interrupted (`inferline registry serve`)."""
    with _make_server(repo_dir, host, port) as httpd:
        httpd.serve_forever()
