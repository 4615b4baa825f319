"""REST routes for processes and sessions. Thin: they validate, call the session manager, shape replies.

Errors are QspanErrors carrying their HTTP status; the app's one handler turns them into replies.
Exports are in exports.py, the live WebSocket in ws.py.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from qspan.errors import QspanError
from qspan.live import crosscheck
from qspan.output.crosscheck import DEFAULT_BOUNDARIES_US

from .deps import Manager, Session

processes_router = APIRouter(prefix="/api/processes", tags=["processes"])
sessions_router = APIRouter(prefix="/api/sessions", tags=["sessions"])


class AttachRequest(BaseModel):
    # Anything else is refused (422), not ignored: bpftrace program text is never an API input.
    model_config = ConfigDict(extra="forbid")

    pid: int = Field(gt=0, description="PID of a running QEMU")
    profile: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]*$", description="tracers/profiles name; default: auto")
    qemu_accounting: bool = Field(False, description="also trace QEMU's own accounting interval of each request "
                                                     "(needed for the cross-check with QEMU's histograms)")


class CrossCheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    boundaries_us: list[int] = Field(list(DEFAULT_BOUNDARIES_US), min_length=1, max_length=64,
                                     description="the histograms' bin boundaries, increasing, in us")


@processes_router.get("", summary="QEMU processes on this host")
def processes(manager: Manager) -> list[dict]:
    return manager.processes()


@sessions_router.post("", status_code=201, summary="attach the tracer to a QEMU by PID")
def attach(body: AttachRequest, manager: Manager) -> dict:
    return manager.attach(body.pid, body.profile, body.qemu_accounting).status()


@sessions_router.get("", summary="all sessions of this server")
def sessions(manager: Manager) -> list[dict]:
    return [s.status() for s in manager.list()]


@sessions_router.get("/{sid}", summary="a session's health and latency breakdown")
def session(s: Session) -> dict:
    status = s.status()
    with s.locked():
        return {"status": status, "breakdown": s.store.breakdown()}


@sessions_router.delete("/{sid}", summary="detach the tracer")
def detach(sid: str, manager: Manager) -> dict:
    return manager.detach(sid).status()


@sessions_router.get("/{sid}/spans", summary="spans by time, latency and op")
def spans(s: Session,
          since_ns: Annotated[int, Query(ge=0)] = 0, until_ns: Annotated[int | None, Query(ge=0)] = None,
          op: Annotated[str | None, Query(pattern=r"^(read|write|flush|copy|job:.+)$",
                                          description="an op, or job:ID for a block job's requests")] = None,
          min_dur_us: Annotated[float, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=20000)] = 1000) -> list[dict]:
    with s.locked():
        return s.store.query(since_ns, until_ns, op, min_dur_us, limit)


@sessions_router.get("/{sid}/spans/{span_id}", summary="one span with its thread timeline")
def span(s: Session, span_id: int) -> dict:
    with s.locked():
        d = s.store.get(span_id)
        timeline = s.store.timelines.get(span_id)
        timeline = timeline.dicts() if timeline else []
    if d is None:
        raise HTTPException(404, f"span {span_id} is not (or no longer) in session {s.id}")
    return {"span": d, "timeline": timeline}


@sessions_router.get("/{sid}/latency", summary="per-second latency percentiles per op")
def latency(s: Session) -> list[dict]:
    with s.locked():
        return list(s.store.seconds)


@sessions_router.post("/{sid}/crosscheck", status_code=201,
                      summary="turn on QEMU's latency histograms (clearing them) and compare from now on")
def start_crosscheck(s: Session, body: CrossCheckRequest) -> dict:
    b = body.boundaries_us
    if b[0] <= 0 or any(y <= x for x, y in zip(b, b[1:])):
        raise QspanError(f"boundaries_us: increasing positive integers, not {b}")
    crosscheck.start(s, [x * 1000 for x in b])
    return {"started": True, "boundaries_us": b}


@sessions_router.get("/{sid}/crosscheck", summary="QEMU's histograms now, against the spans since the check began")
def crosscheck_report(s: Session) -> dict:
    return crosscheck.report(s)
