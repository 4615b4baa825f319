"""A minimal, synchronous QMP client: enough to read thread ids and block nodes.

QEMU's monitor accepts one client at a time per socket; if another client
(libvirt, say) holds it, connecting waits. Every call here has a short timeout
so qspan never hangs on a busy monitor.
"""

from __future__ import annotations

import json
import socket
from typing import Any


class QMPError(Exception):
    pass


class QMPClient:
    def __init__(self, path: str, timeout_s: float = 2.0):
        self.path = path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> "QMPClient":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(self.path)
            self._sock = sock
            greeting = self._read()
            if "QMP" not in greeting:
                raise QMPError(f"{self.path}: not a QMP monitor")
            self.execute("qmp_capabilities")
        except (OSError, ValueError) as err:
            sock.close()
            self._sock = None
            raise QMPError(f"{self.path}: {err}") from err

    def close(self) -> None:
        if self._sock:
            self._sock.close()
            self._sock = None

    def _read(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QMPError(f"{self.path}: monitor closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, **arguments: Any) -> Any:
        if self._sock is None:
            raise QMPError("not connected")
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
            while True:
                reply = self._read()
                if "event" in reply:
                    continue
                if "error" in reply:
                    raise QMPError(f"{command}: {reply['error'].get('desc', reply['error'])}")
                return reply.get("return")
        except (OSError, ValueError) as err:
            raise QMPError(f"{self.path}: {command}: {err}") from err
