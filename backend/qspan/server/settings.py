"""The server's one settings object."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

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
    # Ended (detached or failed) sessions are forgotten, their spans with them, once more
    # than this many have ended or this long after they ended; their recordings stay on disk.
    keep_ended_sessions: int = 32
    ended_session_ttl_s: float = 3600.0

    def check(self) -> None:
        if self.record_max_mb < 0:
            raise QspanError(f"--record-max-mb must be 0 (no limit) or more, not {self.record_max_mb}")
        if self.keep_ended_sessions < 0 or self.ended_session_ttl_s < 0:
            raise QspanError("keep_ended_sessions and ended_session_ttl_s must be 0 or more")
        if not is_loopback(self.host) and not self.token:
            raise QspanError(
                f"refusing to serve on {self.host}: a non-loopback address needs --token "
                "(anyone who can reach it could trace this host's QEMUs)"
            )

    @property
    def allowed_origins(self) -> set[str]:
        hosts = {self.host, "127.0.0.1", "localhost"} if is_loopback(self.host) else {self.host}
        return {f"http://{h}:{self.port}" for h in hosts} | set(self.extra_origins)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
