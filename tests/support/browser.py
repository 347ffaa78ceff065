"""Headless Chromium (Debian's `chromium`, installed by `make tools`) driven over the DevTools protocol.

A small client over `websocket-client` (already installed with the `kubernetes` client): open a page,
collect console errors, evaluate JavaScript, take a screenshot. Playwright would download its own browsers;
this uses the system one.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websocket

CHROMIUM = os.environ.get("TUNEWRIGHT_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--autoplay-policy=no-user-gesture-required"]
ARTIFACTS = Path(os.environ.get("TUNEWRIGHT_TEST_ARTIFACTS", Path(__file__).parents[2] / "build" / "test-artifacts"))


def chromium_or_skip() -> str:
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        pytest.skip(f"{CHROMIUM} not found: `make tools` installs Debian's chromium (apt, as root)")
    return CHROMIUM


class Page:
    """One tab of a fresh headless Chromium (own profile directory, no network use of its own)."""

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="tunewright-chromium-")
        self.proc = subprocess.Popen([chromium_or_skip(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = self._devtools_port()
        deadline = time.monotonic() + timeout
        while True:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            pages = [t for t in targets if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        self._id = 0
        self.events: list[dict[str, Any]] = []
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")

    def _devtools_port(self) -> int:
        assert self.proc.stderr is not None
        seen = []
        for line in self.proc.stderr:  # Chromium prints "DevTools listening on ws://127.0.0.1:<port>/..."
            seen.append(line)
            if match := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line):
                return int(match.group(1))
        raise RuntimeError(f"chromium exited ({self.proc.wait()}) without a DevTools port: {''.join(seen)[-2000:]}")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e.get("method") == event:
                    return e
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(event)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (failed loads, CSP violations)."""
        self.call("Runtime.evaluate", expression="0")  # drain events queued so far
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                out.append(str(params.get("exceptionDetails", {}).get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append(params["entry"].get("text", ""))
        return out

    def screenshot(self, path: Path, width: int = 1200) -> Path:
        """The whole page, `width` CSS pixels wide, as PNG."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Every <img>: decoded (complete) with a non-zero natural size. Every <audio>: a source the browser can play,
# loaded at least to its metadata (duration known), without a media error.
IMAGES_JS = """Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,
  width: i.naturalWidth, height: i.naturalHeight}))"""
AUDIO_JS = """Promise.all(Array.from(document.querySelectorAll('audio')).map(a => new Promise(done => {
  const report = () => done({canPlay: a.canPlayType('audio/wav'), readyState: a.readyState,
                             duration: a.duration, error: a.error ? a.error.code : null});
  if (a.readyState >= 1 || a.error) { report(); return; }
  a.addEventListener('loadedmetadata', report, {once: true});
  a.addEventListener('error', report, {once: true});
  a.load();
})))"""


def check_page(url: str, screenshot: Path) -> dict[str, Any]:
    """Open `url` headless; returns its images, audio elements, console errors and screenshot path."""
    with Page() as page:
        page.open(url)
        images, audio = page.evaluate(IMAGES_JS), page.evaluate(AUDIO_JS)
        shot = page.screenshot(screenshot)
        return {"images": images, "audio": audio, "errors": page.console_errors(), "screenshot": shot}
