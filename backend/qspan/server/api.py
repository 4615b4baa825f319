"""REST and WebSocket routes. Thin: they validate, call the session manager, shape replies."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from qspan.output import chrome as exporters

from qspan import program

from qspan import target

from qspan import catalogue
from qspan.errors import QspanError, TargetError, TracerError
from qspan.live import LiveSession
from .sessions import SessionError, SessionManager
from .settings import Settings

router = APIRouter(prefix="/api")


def get_manager(request: Request) -> SessionManager:
    return request.app.state.manager


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


Manager = Annotated[SessionManager, Depends(get_manager)]


def _session(manager: SessionManager, sid: str) -> LiveSession:
    try:
        return manager.get(sid)
    except SessionError as err:
        raise HTTPException(err.status, str(err)) from None


class AttachRequest(BaseModel):
    pid: int = Field(gt=0, description="PID of a running QEMU")
    profile: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]*$", description="tracers/profiles name; default: auto")


@router.get("/processes", summary="QEMU processes on this host")
def processes(manager: Manager) -> list[dict]:
    out = []
    cat = catalogue.load()
    attached = {s.pid: s.id for s in manager.sessions.values() if s.state in ("attaching", "attached")}
    for pid in target.list_qemu_pids():
        try:
            t = target.inspect(pid)
            out.append({"pid": pid, "exe": t.exe, "version": t.version, "qmp": t.qmp_path,
                        "probe_source": t.probe_source, "profile": program.choose_profile(cat, t).name,
                        "session": attached.get(pid)})
        except QspanError as err:
            out.append({"pid": pid, "error": str(err), "session": attached.get(pid)})
    return out


@router.post("/sessions", status_code=201, summary="attach the tracer to a QEMU by PID")
def attach(body: AttachRequest, manager: Manager) -> dict:
    try:
        return manager.attach(body.pid, body.profile).status()
    except SessionError as err:
        raise HTTPException(err.status, str(err)) from None
    except TargetError as err:
        raise HTTPException(404 if "no process" in str(err) else 422, str(err)) from None
    except TracerError as err:
        raise HTTPException(503 if "root" in str(err) or "bpftrace" in str(err) else 422, str(err)) from None


@router.get("/sessions", summary="all sessions of this server")
def sessions(manager: Manager) -> list[dict]:
    return [s.status() for s in manager.sessions.values()]


@router.get("/sessions/{sid}", summary="a session's health and latency breakdown")
def session(sid: str, manager: Manager) -> dict:
    s = _session(manager, sid)
    status = s.status()
    with s.locked():
        return {"status": status, "breakdown": s.store.breakdown()}


@router.delete("/sessions/{sid}", summary="detach the tracer")
def detach(sid: str, manager: Manager) -> dict:
    try:
        return manager.detach(sid).status()
    except SessionError as err:
        raise HTTPException(err.status, str(err)) from None


@router.get("/sessions/{sid}/spans", summary="spans by time, latency and op")
def spans(sid: str, manager: Manager,
          since_ns: Annotated[int, Query(ge=0)] = 0, until_ns: Annotated[int | None, Query(ge=0)] = None,
          op: Literal["read", "write", "flush"] | None = None,
          min_dur_us: Annotated[float, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=20000)] = 1000) -> list[dict]:
    s = _session(manager, sid)
    with s.locked():
        return s.store.query(since_ns, until_ns, op, min_dur_us, limit)


@router.get("/sessions/{sid}/spans/{span_id}", summary="one span with its thread timeline")
def span(sid: str, span_id: int, manager: Manager) -> dict:
    s = _session(manager, sid)
    with s.locked():
        d = s.store.get(span_id)
        timeline = s.store.timelines.get(span_id)
        timeline = timeline.dicts() if timeline else []
    if d is None:
        raise HTTPException(404, f"span {span_id} is not (or no longer) in session {sid}")
    return {"span": d, "timeline": timeline}


@router.get("/sessions/{sid}/latency", summary="per-second latency percentiles per op")
def latency(sid: str, manager: Manager) -> list[dict]:
    s = _session(manager, sid)
    with s.locked():
        return list(s.store.seconds)


def _export_range(s: LiveSession, since_ns: int, until_ns: int | None) -> list[dict]:
    with s.locked():
        return s.store.query(since_ns, until_ns, None, 0, 1 << 30)


@router.get("/sessions/{sid}/export/spans.json", summary="spans JSON (schema qspan.spans/1)")
def export_spans(sid: str, manager: Manager, since_ns: Annotated[int, Query(ge=0)] = 0,
                 until_ns: Annotated[int | None, Query(ge=0)] = None) -> JSONResponse:
    s = _session(manager, sid)
    doc = exporters.spans_document(_export_range(s, since_ns, until_ns), s.header, s.status())
    return JSONResponse(doc, headers={"Content-Disposition": f'attachment; filename="qspan-{sid}-spans.json"'})


@router.get("/sessions/{sid}/export/perfetto.json", summary="Chrome trace-event JSON for Perfetto")
def export_perfetto(sid: str, manager: Manager, since_ns: Annotated[int, Query(ge=0)] = 0,
                    until_ns: Annotated[int | None, Query(ge=0)] = None) -> JSONResponse:
    s = _session(manager, sid)
    spans = _export_range(s, since_ns, until_ns)
    with s.locked():
        timelines = {x["id"]: s.store.timelines[x["id"]].dicts() for x in spans if x["id"] in s.store.timelines}
    doc = exporters.chrome_trace(spans, timelines, s.header)
    return JSONResponse(doc, headers={"Content-Disposition": f'attachment; filename="qspan-{sid}-perfetto.json"'})


def frame(s: LiveSession, seconds: int = 120, slowest: int = 10) -> dict:
    """What a live client gets a few times a second: health, recent percentiles, breakdowns, slowest."""
    status = s.status()
    with s.locked():
        rows = list(s.store.seconds)
        breakdown = s.store.breakdown()
        slow = s.store.slowest(slowest)
    cutoff = rows[-1]["t_s"] - seconds if rows else 0
    return {
        "type": "frame",
        "status": status,
        "latency": [r for r in rows if r["t_s"] > cutoff],
        "breakdown": breakdown,
        "slowest": [{"id": x["id"], "op": x["op"], "offset": x["offset"], "bytes": x["bytes"],
                     "dur_us": x["dur_ns"] / 1000, "end_ns": x["end_ns"],
                     "phases": {p["name"]: p["dur_ns"] / 1000 for p in x["phases"]}}
                    for x in slow],
    }


# Clients on one session share a frame built in the last FRAME_REUSE_S: ten
# dashboards cost one frame build per tick, not ten.
FRAME_REUSE_S = 0.02
_frames: dict[str, tuple[float, str]] = {}


def shared_frame(s: LiveSession) -> str:
    now = time.monotonic()
    hit = _frames.get(s.id)
    if hit and now - hit[0] < FRAME_REUSE_S:
        return hit[1]
    data = json.dumps(frame(s))
    _frames[s.id] = (now, data)
    if len(_frames) > 64:  # sessions come and go: forget the stale ones
        for sid, (t, _) in list(_frames.items()):
            if now - t > 10:
                del _frames[sid]
    return data


@router.websocket("/sessions/{sid}/live")
async def live(ws: WebSocket, sid: str) -> None:
    settings: Settings = ws.app.state.settings
    manager: SessionManager = ws.app.state.manager
    origin = ws.headers.get("origin")
    if origin is not None and origin not in settings.allowed_origins:
        await ws.close(code=1008, reason="origin not allowed")
        return
    if settings.token and ws.query_params.get("token") != settings.token:
        await ws.close(code=1008, reason="token required")
        return
    s = manager.sessions.get(sid)
    if s is None:
        await ws.close(code=1008, reason=f"no session {sid}")
        return
    await ws.accept()
    # One frame in flight per client, built fresh each tick: a slow client gets fewer frames,
    # never a queue; one that cannot take a frame within send_timeout_s is dropped.
    try:
        next_tick = time.monotonic()
        while True:
            data = shared_frame(s)
            await asyncio.wait_for(ws.send_text(data), timeout=settings.send_timeout_s)
            if s.state in ("detached", "failed"):
                await ws.send_text(json.dumps({"type": "end", "status": s.status()}))
                await ws.close()
                return
            # a fixed cadence, not "interval after the last send": a busy server keeps its rate
            next_tick = max(next_tick + settings.frame_interval_s, time.monotonic() - settings.frame_interval_s)
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    except (WebSocketDisconnect, asyncio.TimeoutError):
        return
