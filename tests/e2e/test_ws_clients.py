"""Ten WebSocket clients on a live session for a minute, one of them never reading.

The server builds one frame per client per tick and never queues: the client
that does not read stalls only its own sender (and is dropped after
send_timeout_s); the others keep receiving, and server memory stays bounded.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets

from helpers import require_tracing
from qspanlab import lab
from qspanlab.harness import ServerProcess as Server

pytestmark = pytest.mark.e2e
SECONDS = int(__import__("os").environ.get("QSPAN_WS_SECONDS", "60"))


def test_ten_clients_one_stalled(tmp_path):
    require_tracing()
    vm = lab.up(tmp_path / "lab")
    server = Server().wait_ready()
    try:
        sid = server.attach(vm.pid)
        lab.send_command(vm, "loop --op write --qd 4 --duration 5 --rate 300")
        url = f"ws://127.0.0.1:{server.port}/api/sessions/{sid}/live"
        rss = []

        async def reader(counts, i):
            async with websockets.connect(url, max_size=None) as ws:
                end = time.monotonic() + SECONDS
                while time.monotonic() < end:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
                    counts[i].append(time.monotonic())
                    assert msg["type"] == "frame"

        async def stalled():
            # max_queue=1: the client library stops reading the socket, so TCP backs up to the server
            async with websockets.connect(url, max_queue=1, max_size=None) as ws:
                await asyncio.sleep(SECONDS)
                return ws.state

        async def sample_rss():
            for _ in range(SECONDS // 5):
                rss.append(server.rss_kib())
                await asyncio.sleep(5)

        async def main():
            counts = {i: [] for i in range(9)}
            results = await asyncio.gather(*(reader(counts, i) for i in range(9)), stalled(), sample_rss(),
                                           return_exceptions=True)
            failed = [(i, repr(r)) for i, r in enumerate(results) if isinstance(r, BaseException)]
            assert not failed, f"clients failed (9 is the stalled one): {failed}"
            return counts

        counts = asyncio.run(main())
    finally:
        lab.send_command(vm, "stop")
        server.stop()
        print("server stderr:", server.stderr()[-3000:])
        lab.down(tmp_path / "lab")
    expected = SECONDS / 0.25
    for i, stamps in counts.items():
        assert len(stamps) >= 0.5 * expected, f"reader {i} got {len(stamps)} frames of ~{expected:.0f}"
        assert stamps[-1] - stamps[0] >= SECONDS - 5, f"reader {i} stopped receiving"
    warm = rss[4:]  # after 20 s: the span store (5,000 spans at 300/s) is full by then
    print(f"server RSS KiB every 5 s: {rss}")
    assert max(warm) - min(warm) < 64 * 1024, f"server RSS grew: {rss}"
