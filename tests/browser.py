"""Drive headless Chromium over the DevTools protocol, with the standard library only.

Chromium started with ``--remote-debugging-pipe`` reads protocol messages from file
descriptor 3 and writes to 4, each a JSON object ended by a NUL byte; no websocket
client, browser download or network is needed. Used by the report acceptance test and
by ``docs/make_report_screenshots.py``.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .debian import ensure_packages

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe",
)
# Put the two pipe ends on the descriptors Chromium expects, then become Chromium.
_EXEC_WITH_PIPES = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4);"
                    " os.execv(sys.argv[3], sys.argv[3:])")
# Make every image load (lazy ones too), wait for all, report their sizes.
_LOAD_IMAGES = """
(async () => {
  const images = Array.from(document.images);
  images.forEach((img) => { img.loading = "eager"; });
  await Promise.all(images.map((img) => img.complete ? null : new Promise((done) => {
    img.addEventListener("load", done); img.addEventListener("error", done);
  })));
  return images.map((img) => ({src: img.getAttribute("src"), width: img.naturalWidth}));
})()
"""


class Chromium:
    """A headless Chromium with one page; use as a context manager."""

    def __init__(self, timeout: float = 60.0):
        self.executable = ensure_packages("chromium", provides="chromium")
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        self._next_id = 0
        self._buffer = b""

    def __enter__(self):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _EXEC_WITH_PIPES, str(to_browser_read),
             str(from_browser_write), self.executable, *FLAGS,
             f"--user-data-dir={self._profile.name}", "about:blank"],
            pass_fds=(to_browser_read, from_browser_write),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target,
                                  flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        return self

    def __exit__(self, *exc):
        try:
            self.call("Browser.close")
        except Exception:  # already gone; it is killed below
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()

    def open(self, path, width: int = 1280, height: int = 900) -> None:
        """Load a local file in a window of ``width`` x ``height`` CSS pixels."""
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width,
                  height=height, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", session=True, url=Path(path).resolve().as_uri())
        self._wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        """Value of a JavaScript expression in the page (promises are awaited)."""
        result = self.call("Runtime.evaluate", session=True, expression=expression,
                           awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def images(self) -> list[dict]:
        """Every ``<img>`` of the page once loaded: ``{"src", "width"}`` (natural width)."""
        return self.evaluate(_LOAD_IMAGES)

    def screenshot(self, out_png, max_height: int = 4000) -> Path:
        """PNG of the page from its top, at most ``max_height`` CSS pixels tall."""
        size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"],
                "height": min(size["height"], max_height), "scale": 1}
        data = self.call("Page.captureScreenshot", session=True, format="png", clip=clip,
                         captureBeyondViewport=True)["data"]
        out_png = Path(out_png)
        out_png.write_bytes(base64.b64decode(data))
        return out_png

    def call(self, method: str, session: bool = False, **params) -> dict:
        """Send one protocol command and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _wait_event(self, method: str) -> dict:
        while True:
            message = self._read()
            if message.get("method") == method:
                return message.get("params", {})

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer within {self.timeout} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (status {self._process.poll()})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)
