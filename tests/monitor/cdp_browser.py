"""Headless Chromium driven over the DevTools protocol, for the dashboard test.

Chromium picks its debugging port (``--remote-debugging-port=0``) and writes
it to ``DevToolsActivePort`` in the profile folder; the test talks to the
first page target over a websocket (``websocket-client``).
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import websocket
from monitor_helpers import wait_for

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--window-size=1400,1100",
)


def chromium_binary() -> str | None:
    found = shutil.which("chromium")
    if found is None and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"
    return found


class Browser:
    """One chromium process and a DevTools session on its page."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.profile = profile
        self.log = profile.with_name(profile.name + ".log")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                            stdout=log, stderr=subprocess.STDOUT)
        self._ids = itertools.count(1)
        self.ws: websocket.WebSocket | None = None

    def connect(self) -> Browser:
        port_file = self.profile / "DevToolsActivePort"
        wait_for(lambda: port_file.exists() and len(port_file.read_text().splitlines()) >= 2, 30,
                 what=f"chromium's DevTools port (log {self.log})")
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.loads(response.read())
        page = next(target for target in targets if target["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.call("Page.enable")
        return self

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result, skipping the events in between."""
        assert self.ws is not None
        request_id = next(self._ids)
        self.ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") != request_id:
                continue
            if "error" in message:
                raise RuntimeError(f"{method} failed: {message['error']}")
            return message["result"]

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        wait_for(lambda: self.evaluate("document.readyState") == "complete", 20, what=f"{url} to load")

    def evaluate(self, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression!r} raised: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Close the session and stop chromium and its helper processes, by pid."""
        if self.ws is not None:
            self.ws.close()
        try:
            tree = [self.process.pid, *(p.pid for p in psutil.Process(self.process.pid).children(recursive=True))]
        except psutil.NoSuchProcess:
            tree = []
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        for pid in tree[1:]:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
