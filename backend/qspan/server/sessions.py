"""Live tracing sessions held by the server (the I/O edge between HTTP and tracers)."""

from __future__ import annotations

import itertools
import threading

from qspan.errors import QspanError
from qspan.live import LiveSession
from .settings import Settings


class SessionError(QspanError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class SessionManager:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.sessions: dict[str, LiveSession] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def attach(self, pid: int, profile: str | None) -> LiveSession:
        with self._lock:
            for s in self.sessions.values():
                if s.pid == pid and s.state in ("attaching", "attached"):
                    raise SessionError(409, f"PID {pid} is already traced by session {s.id}")
            sid = f"s{next(self._ids)}"
            self.settings.record_dir.mkdir(parents=True, exist_ok=True)
            session = LiveSession(sid, pid, profile, self.settings.record_dir, sampling=self.settings.sampling,
                                  record_max_bytes=self.settings.record_max_mb * 1024 * 1024 or None)
            session.start()  # inspection errors (no such PID, not QEMU, ...) propagate from here
            self.sessions[sid] = session
            return session

    def get(self, sid: str) -> LiveSession:
        s = self.sessions.get(sid)
        if s is None:
            raise SessionError(404, f"no session {sid!r}")
        return s

    def detach(self, sid: str) -> LiveSession:
        s = self.get(sid)
        s.stop()
        s.join(timeout=30)
        return s

    def tick(self) -> None:
        for s in list(self.sessions.values()):
            if s.state == "attached":
                s.tick()

    def shutdown(self) -> None:
        for s in list(self.sessions.values()):
            s.stop()
        for s in list(self.sessions.values()):
            s.join(timeout=30)
