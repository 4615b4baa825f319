"""qspan: live, per-request latency tracing for QEMU block I/O."""

__version__ = "0.1.0"
