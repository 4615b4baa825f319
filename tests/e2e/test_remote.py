"""The dashboard from another machine: a token-protected server, reached as users reach one.

Real parts: `qspan serve --host 0.0.0.0 --token T` (what docker-compose.yml runs) behind a TCP
forwarder on another port, as a published container port is (the browser's Host and Origin
name the published address, not the server's); the lab QEMU; headless Chromium. Then the same
over HTTPS (--tls-cert/--tls-key, a certificate made here). The page takes the token from the
address's fragment or asks for it, and sends it on every REST call and on the WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websockets
from playwright.sync_api import sync_playwright

from chromium import full_page_screenshot, launch, require_chromium
from helpers import require_tracing
from qspanlab import lab
from qspanlab.harness import ServerProcess

pytestmark = pytest.mark.e2e
TOKEN = "9f2c41d7e0b35a86"


class Forwarder:
    """127.0.0.1:port -> 127.0.0.1:target, byte for byte (a published port, as docker-proxy does it)."""

    def __init__(self, target: int):
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    require_tracing()
    require_chromium()
    d = tmp_path_factory.mktemp("lab")
    info = lab.up(d)
    yield info
    lab.down(d)


def _watch_live(page, vm) -> None:
    """Attach from the page and see live frames and an export, all through the token."""
    page.wait_for_selector(f"#processes tr[data-pid='{vm.pid}'] button.attach", timeout=60_000)
    assert page.locator("#error").is_hidden(), page.inner_text("#error")
    page.click(f"#processes tr[data-pid='{vm.pid}'] button.attach")
    page.wait_for_function("document.getElementById('health').dataset.state === 'attached'", timeout=120_000)
    lab.send_command(vm, "loop --op write --qd 4 --duration 3 --rate 300")
    try:
        page.wait_for_function("document.getElementById('latency').data && document.getElementById('latency').data.length > 0"
                               " && document.getElementById('latency').data[0].x.length >= 2", timeout=60_000)
        with page.expect_download() as dl:
            page.click("#export-spans")
        doc = json.loads(Path(dl.value.path()).read_text())
        assert doc["schema"] == "qspan.spans/1" and len(doc["spans"]) > 0
    finally:
        lab.send_command(vm, "stop")
        page.click("#detach")
        page.wait_for_function("document.getElementById('health').dataset.state === 'detached'", timeout=60_000)


def test_a_token_protected_server_through_a_published_port(vm, output_dir):
    server = ServerProcess("--token", TOKEN, host="0.0.0.0").wait_ready(headers={"Authorization": f"Bearer {TOKEN}"})
    published = Forwarder(server.port)
    base = f"http://127.0.0.1:{published.port}"
    try:
        assert "warning: plain HTTP on 0.0.0.0" in server.stderr() and "ssh -L" in server.stderr()
        with sync_playwright() as p:
            browser = launch(p)
            # the token in the fragment: taken, kept for the tab, and gone from the address
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"{base}/#token={TOKEN}")
            _watch_live(page, vm)
            assert "token" not in page.url, page.url
            assert not [u for u in requests if TOKEN in u], "the token went into a URL"
            full_page_screenshot(page, output_dir / "remote-1-live.png")
            assert errors == [], errors

            # a wrong token: the server refuses, the page asks (once), the right one works
            page = browser.new_context().new_page()
            asked = []

            def answer(dialog):
                asked.append(dialog.message)
                dialog.accept(TOKEN)

            page.on("dialog", answer)
            page.goto(f"{base}/#token=wrong")
            page.wait_for_selector(f"#processes tr[data-pid='{vm.pid}']", timeout=60_000)
            assert len(asked) == 1 and "refused" in asked[0], asked
            # no token at all: asked for it
            page = browser.new_context().new_page()
            asked.clear()
            page.on("dialog", answer)
            page.goto(f"{base}/")
            page.wait_for_selector(f"#processes tr[data-pid='{vm.pid}']", timeout=60_000)
            assert len(asked) == 1 and "needs its token" in asked[0], asked
            browser.close()

        # REST: 401 without the right token, through the published port too
        status, body = server.request("GET", "/api/sessions", headers={"Authorization": "Bearer wrong"})
        assert (status, body) == (401, {"detail": "token required"})

        # WebSocket from a page of another site: refused even with the token; from the published
        # address (the page's own origin), the session's frames (the session above, detached)
        sid = server.get("/api/sessions", headers={"Authorization": f"Bearer {TOKEN}"})[1][0]["id"]

        async def connect(origin):
            url = f"ws://127.0.0.1:{published.port}/api/sessions/{sid}/live?token={TOKEN}"
            async with websockets.connect(url, origin=origin) as ws:
                return json.loads(await asyncio.wait_for(ws.recv(), 10))["type"]

        assert asyncio.run(connect(base)) == "frame"
        with pytest.raises(websockets.exceptions.InvalidStatus) as err:  # refused in the handshake
            asyncio.run(connect("http://evil.example"))
        assert err.value.response.status_code == 403
    finally:
        published.close()
        server.stop()


def test_the_same_over_https(vm, tmp_path, output_dir):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = ServerProcess("--token", TOKEN, "--tls-cert", str(cert), "--tls-key", str(key), host="0.0.0.0")
    base = f"https://127.0.0.1:{server.port}"
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        deadline = time.monotonic() + 30
        while True:  # up, and answering HTTPS with the token
            try:
                req = urllib.request.Request(f"{base}/api/sessions", headers={"Authorization": f"Bearer {TOKEN}"})
                with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                    assert r.status == 200
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or server.proc.poll() is not None:
                    raise AssertionError(f"the HTTPS server did not come up: {server.stderr()}")
                time.sleep(0.2)
        assert "warning: plain HTTP" not in server.stderr()
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_context(ignore_https_errors=True, accept_downloads=True).new_page()
            page.goto(f"{base}/#token={TOKEN}")
            _watch_live(page, vm)  # the live view over wss
            full_page_screenshot(page, output_dir / "remote-2-https.png")
            browser.close()
    finally:
        server.stop()
