"""The live WebSocket: a session's frame a few times a second, for the view the client chose, then an end message.

The client may send a view at any time ({"type": "view", "scope", "op", "window_s", "range_s"}:
live/views.py); the next frame is for it. A view that cannot be is answered with
{"type": "error", "message"} and the previous view stays.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from qspan.live.views import View, ViewError, parse_view

from .deps import AppSettings, Manager, token_ok
from .sessions import ENDED

log = logging.getLogger("qspan.server")

router = APIRouter(prefix="/api/sessions", tags=["live"])
PROTOCOL = "qspan.v1"  # what the page asks for, and the server accepts with
# + the token, base64url (a subprotocol may hold only token characters): how the page hands it
# over; the server never echoes it
TOKEN_PROTOCOL = "qspan.token."
MAX_CLIENT_MESSAGE = 4096  # a view is a few hundred bytes
# After the end (or for a recording opened with --open) frames change only with the client's view.
ENDED_FRAME_INTERVAL_S = 0.5


class ClientViews:
    """What the client asked for last (read by the sender), and errors to tell it."""

    MAX_ERRORS = 8  # a client that keeps sending junk and never reads is told of the last few

    def __init__(self) -> None:
        self.view = View()
        self.errors: list[str] = []
        self.gone = False

    def refuse(self, why: str) -> None:
        self.errors = (self.errors + [why])[-self.MAX_ERRORS:]

    async def read(self, ws: WebSocket) -> None:
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                text = msg.get("text")
                if text is None:
                    self.refuse("view refused: send a view as text (JSON), not binary")
                elif len(text) > MAX_CLIENT_MESSAGE:
                    self.refuse(f"a message of {len(text)} bytes: at most {MAX_CLIENT_MESSAGE}")
                else:
                    try:
                        msg = json.loads(text)
                        if not isinstance(msg, dict) or msg.get("type") != "view":
                            raise ViewError('expected {"type": "view", ...}')
                        self.view = parse_view(msg)
                    except (ValueError, ViewError) as err:
                        self.refuse(f"view refused: {err}")
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.gone = True


def _unb64(text: str) -> str:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return ""


@router.websocket("/{sid}/live")
async def live(ws: WebSocket, sid: str, manager: Manager, settings: AppSettings) -> None:
    host = ws.headers.get("host")
    if not settings.host_ok(host) or not settings.origin_ok(ws.headers.get("origin"), host):
        await ws.close(code=1008, reason="origin not allowed")
        return
    # Browsers cannot set headers on a WebSocket: the page offers the token as a subprotocol
    # (never in a URL, where logs and history keep it); other clients may use ?token=.
    offered = list(ws.scope.get("subprotocols", []))  # every Sec-WebSocket-Protocol line, split
    given = next((_unb64(p.removeprefix(TOKEN_PROTOCOL)) for p in offered if p.startswith(TOKEN_PROTOCOL)),
                 ws.query_params.get("token"))
    if not token_ok(given, settings):
        await ws.close(code=1008, reason="token required")
        return
    s = manager.find(sid)
    if s is None:
        await ws.close(code=1008, reason=f"no session {sid}")
        return
    await ws.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
    # One frame in flight per client, built fresh each tick: a slow client gets fewer frames,
    # never a queue; one that cannot take a frame within send_timeout_s is dropped.
    views = ClientViews()
    reader = asyncio.create_task(views.read(ws))
    try:
        next_tick = time.monotonic()
        view, sent = views.view, None  # the charts' version this client has, for its view
        ended = False

        async def send(text: str) -> None:
            await asyncio.wait_for(ws.send_text(text), timeout=settings.send_timeout_s)

        while not views.gone:
            if manager.find(sid) is not s:  # the session was dropped (ended long ago): nothing more to show
                await ws.close(code=1000, reason=f"session {sid} is gone")
                return
            while views.errors:
                await send(json.dumps({"type": "error", "message": views.errors.pop(0)}))
            if views.view != view:
                view, sent = views.view, None
            data, sent = manager.frame(s, view, sent)
            await send(data)
            interval = settings.frame_interval_s
            if s.state in ENDED:
                if not ended:
                    await send(json.dumps({"type": "end", "status": s.status()}))
                    ended = True
                # nothing changes any more but the client's view: frames for it, slower
                interval = ENDED_FRAME_INTERVAL_S
            # a fixed cadence, not "interval after the last send": a busy server keeps its rate
            next_tick = max(next_tick + interval, time.monotonic() - interval)
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    except WebSocketDisconnect:
        return
    except asyncio.TimeoutError:
        log.info("session %s: dropped a live client that took no frame in %.0f s", sid, settings.send_timeout_s)
    except Exception:
        log.exception("session %s: live frames failed", sid)
        with contextlib.suppress(Exception):
            await ws.close(code=1011, reason="internal error")
    finally:
        reader.cancel()
