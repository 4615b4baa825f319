"""QMP, through QEMU's own client (the qemu.qmp package), used synchronously.

qemu.qmp is asyncio; qspan's callers are not (the CLI, the server's worker threads, a timer
thread). Each QMPClient runs its connection on an event loop of its own, and every step
(connect, greeting and capabilities, each command) has a timeout: QEMU's monitor accepts one
client at a time per socket, and while another client (libvirt, say) holds it, connecting
waits for ever. Called from a thread whose event loop is running, the steps run on a helper
thread instead (a loop cannot be run inside another).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any

from qemu.qmp import ExecuteError
from qemu.qmp import QMPClient as _AsyncClient
from qemu.qmp import QMPError as _LibraryError


class QMPError(Exception):
    pass


class QMPClient:
    def __init__(self, path: str, timeout_s: float = 2.0):
        self.path = path
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: _AsyncClient | None = None

    def __enter__(self) -> "QMPClient":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, coro: Coroutine, what: str) -> Any:
        assert self._loop is not None
        bounded = asyncio.wait_for(coro, self.timeout_s)
        try:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return self._loop.run_until_complete(bounded)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                return pool.submit(self._loop.run_until_complete, bounded).result()
        except ExecuteError as err:
            raise QMPError(f"{what}: {err.error.desc}") from None
        except asyncio.TimeoutError:
            raise QMPError(f"{self.path}: {what}: no answer within {self.timeout_s:g} s "
                           "(another client may hold the monitor)") from None
        except (_LibraryError, OSError, ValueError, EOFError) as err:  # EOFError: QEMU closed it (quit)
            raise QMPError(f"{self.path}: {what}: {err}") from err

    def connect(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = _AsyncClient("qspan")
        try:
            self._run(self._client.connect(self.path), "connect")
        except QMPError:
            self.close()
            raise

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            if self._client is not None:
                self._run(self._client.disconnect(), "disconnect")
        except QMPError:
            pass  # closing a connection that already failed
        finally:
            self._loop.close()
            self._loop = self._client = None

    def execute(self, command: str, **arguments: Any) -> Any:
        if self._client is None:
            raise QMPError("not connected")
        return self._run(self._client.execute(command, arguments or None), command)
