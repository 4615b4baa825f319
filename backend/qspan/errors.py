"""Errors that reach the user as one clear line and a non-zero exit."""


class QspanError(Exception):
    """A failure the user can act on; the CLI prints str(err) and exits with `exit_code`."""

    exit_code = 1


class TargetError(QspanError):
    """The PID is not a traceable QEMU (missing, not QEMU, not permitted)."""

    exit_code = 3


class TracerError(QspanError):
    """bpftrace is missing, not permitted, or failed."""

    exit_code = 4


class RecordingError(QspanError):
    """A recording is missing, truncated or malformed."""

    exit_code = 5


class CatalogueError(QspanError):
    """The probe catalogue (tracers/*.txt) is malformed; the message names file:line."""

    exit_code = 6
