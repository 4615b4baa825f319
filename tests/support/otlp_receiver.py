"""A loopback OTLP/HTTP traces receiver for the tests: every request decoded with the official
protobuf definitions (opentelemetry-proto), as a collector would. No collector is reachable here."""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)


def attrs(kvs) -> dict:
    """OTLP KeyValues as a dict of plain values."""
    out = {}
    for kv in kvs:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
    return out


class Receiver:
    """POST /v1/traces on 127.0.0.1; `delay_s` makes it a slow collector."""

    def __init__(self, delay_s: float = 0.0):
        self.requests: list[ExportTraceServiceRequest] = []
        self.content_types: set[str] = set()
        self.headers: list[dict] = []  # each request's HTTP headers
        self.delay_s = delay_s
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)  # raises on anything that is not the protobuf
                time.sleep(received.delay_s)
                received.requests.append(req)
                received.content_types.add(self.headers.get("Content-Type", ""))
                received.headers.append(dict(self.headers))
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def spans(self) -> list[tuple[dict, object]]:
        """Every span received, with its resource's attributes."""
        out = []
        for req in self.requests:
            for rs in req.resource_spans:
                res = attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    out.extend((res, s) for s in ss.spans)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
