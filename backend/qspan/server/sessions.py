"""Live tracing sessions held by the server (the I/O edge between HTTP and tracers)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from qspan.errors import AlreadyTraced, NoSuchSession
from qspan.live import LiveSession
from qspan.live.replay import OpenProgress, ReplaySession
from qspan.live.views import View

from .frames import FrameCache
from .recordings import MiB, make_room, room_check
from .settings import Settings
from .targets import TargetCache, process_identity

log = logging.getLogger("qspan.server")

LIVE = ("attaching", "attached")
ENDED = ("detached", "failed")


class SessionManager:
    """The server's sessions, the live frames they share, and the inspected QEMUs.

    Ended (detached or failed) sessions stay listed, with their spans, until more
    than `settings.keep_ended_sessions` have ended (the oldest go first) or
    `settings.ended_session_ttl_s` has passed since they ended; `tick` drops
    them. Their recordings stay on disk in `settings.record_dir`.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.sessions: dict[str, LiveSession] = {}
        self.frames = FrameCache(clock=clock)
        self.targets = TargetCache()
        self._clock = clock
        self._ended_at: dict[str, float] = {}  # session id -> when this manager first saw it ended
        self._starting: set[int] = set()  # PIDs a session is being started on
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.follower = None  # a HostFollower with --follow-all (server/host.py)
        self.unfollowed: set[tuple] = set()  # processes a user detached from: --follow-all leaves them be

    def attach(self, pid: int, profile: str | None, accounting: bool = False) -> LiveSession:
        """Start a session on QEMU `pid`; inspection and tracer errors (QspanError) propagate."""
        with self._lock:
            for s in self.sessions.values():
                if s.pid == pid and s.state in LIVE:
                    raise AlreadyTraced(f"PID {pid} is already traced by session {s.id}")
            if pid in self._starting:
                raise AlreadyTraced(f"PID {pid} is already traced (a session on it is starting)")
            self._starting.add(pid)
            sid = f"s{next(self._ids)}"
        try:  # outside the lock: inspecting QEMU can take a while, and listing must not wait for it
            st = self.settings
            st.record_dir.mkdir(parents=True, exist_ok=True)
            with self._lock:
                running = {s.record_path: s.record_max_bytes for s in self.sessions.values()
                           if s.state in LIVE and hasattr(s, "record_path")}
            room = make_room(st.record_dir, st.record_total_mb * MiB, st.record_max_mb * MiB or None, running)
            if room.removed:
                log.info("removed %d old recordings for room (--record-total-mb): %s", len(room.removed),
                         ", ".join(room.removed))
            session = LiveSession(sid, pid, profile, st.record_dir, sampling=st.sampling,
                                  record_max_bytes=room.max_bytes, accounting=accounting,
                                  record_room=room_check(st.record_dir, st.record_keep_free_mb * MiB)
                                  if st.record_keep_free_mb else None, record_note=room.note,
                                  otlp=(st.otlp_endpoint, dict(st.otlp_headers)) if st.otlp_endpoint else None)
            session.start()  # inspection errors (no such PID, not QEMU, ...) propagate from here
            with self._lock:
                self.sessions[sid] = session
        finally:
            with self._lock:
                self._starting.discard(pid)
        log.info("session %s: attaching to PID %d (profile %s)", sid, pid, session.profile_name)
        return session

    def open_recording(self, path: str | Path, pinned: bool = False, progress: OpenProgress | None = None) -> ReplaySession:
        """A session made by replaying a recording (RecordingError if it is unreadable); it is ended at once.
        A pinned one (`qspan serve --open`) stays for the server's lifetime: prune leaves it."""
        with self._lock:
            sid = f"s{next(self._ids)}"
        session = ReplaySession(sid, path, progress)
        session.pinned = pinned
        session.start()
        with self._lock:
            self.sessions[sid] = session
        log.info("session %s: replayed %s", sid, path)
        return session

    def list(self) -> list[LiveSession]:
        with self._lock:
            return list(self.sessions.values())

    def find(self, sid: str) -> LiveSession | None:
        return self.sessions.get(sid)

    def get(self, sid: str) -> LiveSession:
        s = self.sessions.get(sid)
        if s is None:
            raise NoSuchSession(f"no session {sid!r}")
        return s

    def detach(self, sid: str) -> LiveSession:
        s = self.get(sid)
        ident = process_identity(s.pid) if not isinstance(s, ReplaySession) else None  # a replay's PID is history
        if ident is not None:
            self.unfollowed.add(ident)  # the user's choice outlasts the next scan; a restarted QEMU is new
        s.stop()
        s.join(timeout=30)
        return s

    def frame(self, s: LiveSession, view: View = View(), sent_version: int | None = None) -> tuple[str, int]:
        """The session's live frame for a view as JSON, shared by every client within FRAME_REUSE_S,
        its charts null when unchanged since `sent_version`; and the charts' version."""
        data = self.frames.get(s, view, sent_version)
        if s.id not in self.sessions:  # dropped while a client still held it: cache nothing for it
            self.frames.drop(s.id)
        return data

    def processes(self) -> list[dict]:
        """The host's QEMU processes (inspected once each), with the live session on each."""
        traced = {s.pid: s.id for s in self.list() if s.state in LIVE}
        return [row | {"session": traced.get(row["pid"])} for row in self.targets.rows()]

    def tick(self) -> None:
        """Correlate what is due in every attached session; notice ended sessions; drop old ones."""
        for s in self.list():
            if s.state == "attached":
                try:
                    s.tick()
                except Exception:
                    log.exception("session %s: tick failed", s.id)
            elif s.state in ENDED and s.id not in self._ended_at:
                self._ended_at[s.id] = self._clock()
                if s.state == "failed":
                    log.warning("session %s on PID %d failed: %s", s.id, s.pid, s.error)
                else:
                    log.info("session %s on PID %d detached%s", s.id, s.pid, f": {s.error}" if s.error else "")
        self.prune()

    def prune(self) -> None:
        """Forget ended sessions beyond the newest keep_ended_sessions, or ended over ended_session_ttl_s ago."""
        now = self._clock()
        with self._lock:
            ended = sorted((t, sid) for sid, t in self._ended_at.items()
                           if sid in self.sessions and not getattr(self.sessions[sid], "pinned", False))
            overflow = len(ended) - self.settings.keep_ended_sessions
            gone = [sid for i, (t, sid) in enumerate(ended)
                    if i < overflow or now - t > self.settings.ended_session_ttl_s]
            for sid in gone:
                del self.sessions[sid]
            for sid in [sid for sid in self._ended_at if sid not in self.sessions]:
                del self._ended_at[sid]
        for sid in gone:
            self.frames.drop(sid)
        if gone:
            log.info("dropped ended sessions %s (their recordings stay in %s)", ", ".join(gone), self.settings.record_dir)

    def shutdown(self) -> None:
        for s in self.list():
            s.stop()
        for s in self.list():
            s.join(timeout=30)
