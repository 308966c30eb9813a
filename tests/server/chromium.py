"""Headless Chromium (the system's `chromium`, as scripts/install.sh --test installs it) driven over the
Chrome DevTools Protocol: load a page, evaluate JavaScript in it, take a full-page screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

WIDTH = 1440


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium is not installed: run scripts/install.sh --test")


@contextmanager
def chromium(profile_dir: Path, start_timeout_s: float = 20) -> Iterator[Page]:
    """A headless Chromium with one blank page, closed on exit."""
    process = subprocess.Popen(
        [
            chromium_binary(),
            "--headless=new",
            # Tests run as root in CI containers, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile_dir}",
            f"--window-size={WIDTH},1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port = _devtools_port(process, profile_dir / "DevToolsActivePort", start_timeout_s)
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
        target = next(t for t in targets if t["type"] == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            page = Page(ws)
            page.call("Runtime.enable")
            page.call("Page.enable")
            yield page
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _devtools_port(process: subprocess.Popen[bytes], active_port: Path, timeout_s: float) -> int:
    """Chromium writes the port it picked, then the browser target's path, to this file."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode}")
        lines = active_port.read_text().split("\n") if active_port.exists() else []
        if len(lines) >= 2 and lines[0].isdigit():
            return int(lines[0])
        time.sleep(0.05)
    raise RuntimeError(f"chromium did not open its DevTools port in {timeout_s} s")


class Page:
    """One page over its DevTools websocket. JavaScript exceptions it throws are kept in `errors`."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.errors: list[str] = []
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer, keeping exceptions reported meanwhile."""
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.errors.append(details.get("exception", {}).get("description", details["text"]))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message["result"])

    def navigate(self, url: str, timeout_s: float = 15) -> None:
        """Open `url` and wait until its document has loaded (Page.navigate answers before that)."""
        self.call("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", timeout_s)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float) -> Any:
        """The expression's value once it is truthy; TimeoutError naming it otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{expression!r} was still falsy after {timeout_s} s")

    def screenshot(self, path: Path) -> Path:
        """The whole page, not only the window: the viewport is stretched to the content's height."""
        height = self.evaluate("document.documentElement.scrollHeight")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        shot = self.call("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
