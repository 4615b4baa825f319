"""Run the dashboard server in this process (what `qspan serve` does)."""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable

from qspan.server.settings import Settings


def _progress(msg: str) -> None:
    print(f"qspan: {msg}", file=sys.stderr, flush=True)


class OpeningProgress:
    """How far opening a recording got, said every `every_s`: it is checked, then replayed through
    the correlator (~25 s for 75 MiB here, most of it replaying), and a user should not think the
    server stuck."""

    def __init__(self, path, say: Callable[[str], None], every_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.path, self.say, self.every_s, self.clock = path, say, every_s, clock
        self.last_said = clock()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if now - self.last_said < self.every_s:
            return
        self.last_said = now
        self.say(f"opening {self.path}: {stage}, {100 * done / max(1, total):.0f} % ...")


def _log_to_stderr(level: int = logging.WARNING) -> None:
    """The "qspan" loggers to stderr, one line each (uvicorn's own config leaves them alone)."""
    logger = logging.getLogger("qspan")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("qspan: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # no second copy through a root handler someone else configured


def serve(settings: Settings, attach_pid: int | None = None, recordings: tuple = ()) -> None:
    """Serve until interrupted; with `attach_pid`, a session on that QEMU starts at once; each of
    `recordings` is replayed into a session of its own first, kept for the server's lifetime."""
    import uvicorn

    from qspan.server.app import create_app

    # The span store holds a few hundred thousand small objects; the cyclic GC's
    # full passes over them stalled the live path for ~200 ms (bench/live.py's
    # p99). Spans and events hold no reference cycles: collect far less often.
    gc.freeze()
    gc.set_threshold(200_000, 20, 100)

    _log_to_stderr()
    app = create_app(settings)
    for path in recordings:  # a RecordingError here is the command's one clear error, before serving
        started = time.monotonic()
        session = app.state.manager.open_recording(path, pinned=True, progress=OpeningProgress(path, _progress))
        _progress(f"opened {path} as session {session.id} in {time.monotonic() - started:.0f} s:"
                  f" {session.feed.store.requests} spans")
    if attach_pid is not None:
        session = app.state.manager.attach(attach_pid, None)
        _progress(f"attaching to PID {attach_pid} (session {session.id}, profile {session.profile_name})")
    where = f"{settings.scheme}://{settings.host}:{settings.port}/"
    _progress(f"serving the dashboard on {where}" + (" (token required: open it as "
                                                        f"{where}#token=..., or the page asks)" if settings.token else ""))
    if settings.plain_http_beyond_loopback:
        _progress(f"warning: plain HTTP on {settings.host}: the token and every trace cross the network in clear; "
                  "give --tls-cert/--tls-key, or serve on 127.0.0.1 and reach it through an SSH tunnel "
                  f"(ssh -L {settings.port}:127.0.0.1:{settings.port} HOST)")
    tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)} if settings.tls_cert else {}
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", **tls)
