"""The server's one settings object."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from qspan.errors import QspanError


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8321
    token: str | None = None  # required whenever host is not loopback
    record_dir: Path = Path("/tmp/qspan-sessions")
    # WebSocket push rate: 10 frames/s. With the tracer's 25 ms dumps this keeps a
    # completed request's way to the browser under 250 ms (bench/live.py measures it).
    frame_interval_s: float = 0.1
    send_timeout_s: float = 10.0  # a client that cannot take one frame in this long is dropped
    extra_origins: tuple[str, ...] = field(default_factory=tuple)
    # "auto": when the server falls behind the tracer, trace fewer sampling windows
    # (whole requests kept) instead of losing events at random; "off": never
    sampling: str = "auto"
    # each session's raw recording stops growing here: the ring transport keeps 72 bytes an event,
    # ~5 MB/s at the lab's full rate unsampled (~70k events/s), so ~7 min of it
    record_max_mb: int = 2048
    # all recordings in record_dir together (the oldest finished ones removed first), and the
    # free space a recording leaves its filesystem (server/recordings.py); 0: no limit
    record_total_mb: int = 8192
    record_keep_free_mb: int = 1024
    # Ended (detached or failed) sessions are forgotten, their spans with them, once more
    # than this many have ended or this long after they ended; their recordings stay on disk.
    keep_ended_sessions: int = 32
    ended_session_ttl_s: float = 3600.0
    # HTTPS: both or neither (anything beyond loopback should have it, or go through an SSH tunnel)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # attach to every QEMU on the host, ones started later too (server/host.py)
    follow_all: bool = False
    # every live session's spans also go to this OpenTelemetry collector (OTLP/HTTP traces URL)
    otlp_endpoint: str | None = None
    otlp_headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def check(self) -> None:
        for flag, value in (("--record-max-mb", self.record_max_mb), ("--record-total-mb", self.record_total_mb),
                            ("--record-keep-free-mb", self.record_keep_free_mb)):
            if value < 0:
                raise QspanError(f"{flag} must be 0 (no limit) or more, not {value}")
        if self.keep_ended_sessions < 0 or self.ended_session_ttl_s < 0:
            raise QspanError("keep_ended_sessions and ended_session_ttl_s must be 0 or more")
        if not is_loopback(self.host) and not self.token:
            raise QspanError(
                f"refusing to serve on {self.host}: a non-loopback address needs --token "
                "(anyone who can reach it could trace this host's QEMUs)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise QspanError("--tls-cert and --tls-key go together")
        for what, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
            if path is not None and not path.is_file():
                raise QspanError(f"{what} {path}: no such file")
        if self.otlp_endpoint is not None:
            u = urlsplit(self.otlp_endpoint)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise QspanError(f"--otlp-endpoint {self.otlp_endpoint!r}: an http(s):// URL, "
                                 "e.g. http://127.0.0.1:4318/v1/traces")
            try:  # found at start, not at the first attach
                import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
                import opentelemetry.sdk.trace  # noqa: F401
            except ImportError as err:
                raise QspanError(f"--otlp-endpoint needs the OpenTelemetry SDK ({err.name} missing): "
                                 "pip install 'qspan[otlp]' (scripts/setup.sh installs it)") from None
        for origin in self.extra_origins:
            if not re.fullmatch(r"https?://[^/\s]+", origin):
                raise QspanError(f"--allow-origin {origin!r}: an origin is scheme://host[:port], nothing after")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def plain_http_beyond_loopback(self) -> bool:
        """The token would cross the network in clear: `qspan serve` warns."""
        return not is_loopback(self.host) and self.tls_cert is None

    @property
    def allowed_origins(self) -> set[str]:
        """Origins a WebSocket is accepted from whatever Host it names (besides same_origin_ok)."""
        hosts = {self.host, "127.0.0.1", "localhost", "[::1]"} if is_loopback(self.host) else {self.host}
        return {f"{self.scheme}://{h}:{self.port}" for h in hosts} | set(self.extra_origins)

    def origin_ok(self, origin: str | None, host_header: str | None) -> bool:
        """May a browser page from `origin` open the live WebSocket (sent with Host `host_header`)?

        A page the server itself served has the origin of the address the user opened, which is
        not always the bind address: a published container port, an SSH tunnel, a DNS name. With
        a token that address is accepted as it is (its Host header): a page from any other site
        has its own origin and is refused, and one that rebinds a name of its own to this server
        has no token. Without a token (loopback only), only loopback names are, on any port (an
        SSH tunnel's local end).
        """
        if origin is None:
            return True  # not a browser: the token (when set) is the check
        if origin in self.allowed_origins:
            return True
        # the page's own address: with a token, whatever it is; without one, a loopback name
        # (host_ok: an SSH tunnel on another local port), never a name a site chose
        same = host_header is not None and origin == f"{self.scheme}://{host_header}"
        return same and (bool(self.token) or self.host_ok(host_header))

    def host_ok(self, host_header: str | None) -> bool:
        """A loopback server without a token answers only to loopback names: a site that points a
        name of its own at 127.0.0.1 (DNS rebinding) would otherwise be same-origin with it."""
        if self.token or not is_loopback(self.host):
            return True
        try:
            name = urlsplit("//" + (host_header or "")).hostname
        except ValueError:
            return False
        return name in ("127.0.0.1", "localhost", "::1", self.host.strip("[]"))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
