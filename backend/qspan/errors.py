"""Errors that reach the user as one clear line: a non-zero exit, or an HTTP reply.

The CLI prints str(err) and exits with `exit_code`; the server replies
{"detail": str(err)} with `http_status` (one exception handler, server/app.py).
A subclass refines the status, never the exit code its family has.
"""


class QspanError(Exception):
    """A failure the user can act on."""

    exit_code = 1
    http_status = 422  # the request cannot be done as asked


class TargetError(QspanError):
    """The PID is not a traceable QEMU (missing, not QEMU, not permitted)."""

    exit_code = 3


class NoSuchProcess(TargetError):
    """No process has this PID (or it exited while qspan looked)."""

    http_status = 404


class NotQemu(TargetError):
    """The process exists but is not QEMU (or is a kernel thread)."""

    http_status = 422


class TracerError(QspanError):
    """bpftrace is missing, not permitted, or failed."""

    exit_code = 4


class TracerUnavailable(TracerError):
    """Tracing is impossible on this host as it is: no bpftrace, not root, no tracefs."""

    http_status = 503


class RecordingError(QspanError):
    """A recording is missing, truncated or malformed."""

    exit_code = 5


class CatalogueError(QspanError):
    """The probe catalogue (tracers/*.txt) is malformed; the message names file:line."""

    exit_code = 6
    http_status = 500  # the installation is broken: nothing the client sends can fix it


class SessionError(QspanError):
    """A server session request that cannot be met (the server only)."""


class NoSuchSession(SessionError):
    http_status = 404


class CrossCheckError(SessionError):
    """A live cross-check with QEMU's histograms cannot run (no accounting traced, no QMP, ...)."""

    http_status = 409


class AlreadyTraced(SessionError):
    """The PID already has a live session: one tracer per QEMU."""

    http_status = 409
