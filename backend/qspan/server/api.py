"""REST routes for processes and sessions. Thin: they validate, call the session manager, shape replies.

Errors are QspanErrors carrying their HTTP status; the app's one handler turns them into replies.
Exports are in exports.py, the live WebSocket in ws.py.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from qspan.errors import QspanError
from qspan.live import crosscheck, glossary
from qspan.live.views import ViewError, charts, parse_view, scope_choices, slowest
from qspan.model.spans import span_dict
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
    roles = s.header.get("profile", {}).get("roles")
    with s.locked():
        return {"status": status, "breakdown": s.store.breakdown(),
                "glossary": {"phases": glossary.phase_meanings(roles), "instead": glossary.INSTEAD}}


@sessions_router.delete("/{sid}", summary="detach the tracer")
def detach(sid: str, manager: Manager) -> dict:
    return manager.detach(sid).status()


@sessions_router.get("/{sid}/spans", summary="find requests: by time, op, disk or node, offset range, latency")
def spans(s: Session,
          since_ns: Annotated[int, Query(ge=0)] = 0, until_ns: Annotated[int | None, Query(ge=0)] = None,
          op: Annotated[str | None, Query(pattern=r"^(read|write|flush|copy|job:.+)$",
                                          description="an op, or job:ID for a block job's requests")] = None,
          scope: Annotated[str, Query(max_length=300, description='"all", "disk:NAME" or "node:NAME"')] = "all",
          offset_min: Annotated[int, Query(ge=0, description="the request overlaps [offset_min, offset_max)")] = 0,
          offset_max: Annotated[int | None, Query(ge=0)] = None,
          min_dur_us: Annotated[float, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=20000)] = 1000) -> list[dict]:
    return find(s, since_ns, until_ns, op, scope, offset_min, offset_max, min_dur_us, limit)["spans"]


@sessions_router.get("/{sid}/find", summary="find requests (as /spans), with how far back the search reached")
def find(s: Session,
         since_ns: Annotated[int, Query(ge=0)] = 0, until_ns: Annotated[int | None, Query(ge=0)] = None,
         op: Annotated[str | None, Query(pattern=r"^(read|write|flush|copy|job:.+)$")] = None,
         scope: Annotated[str, Query(max_length=300)] = "all",
         offset_min: Annotated[int, Query(ge=0)] = 0, offset_max: Annotated[int | None, Query(ge=0)] = None,
         min_dur_us: Annotated[float, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=20000)] = 1000) -> dict:
    if scope != "all" and not scope.startswith(("disk:", "node:")):
        raise QspanError('scope: "all", "disk:NAME" or "node:NAME"')
    with s.locked():
        return s.store.search(since_ns, until_ns, op, min_dur_us, limit, scope, offset_min, offset_max, with_disk=True)


def _named(timeline, names: dict) -> list[dict] | None:
    """A timeline's segments as dicts, each with its node's name where qspan knows it, not its pointer."""
    if timeline is None:
        return None
    out = timeline.dicts()
    for seg in out:
        seg["node"] = names.get(seg["node"], (f"0x{seg['node']:x}", ""))[0] if seg["node"] else None
    return out


@sessions_router.get("/{sid}/spans/{span_id}", summary="one span with its thread timeline")
def span(s: Session, span_id: int) -> dict:
    with s.locked():
        found = s.store.find(span_id)
        names = s.feed.correlator.node_names if s.feed else {}
        d = span_dict(found[0]) if found else None
        timeline = _named(found[1], names) if found else None
    if d is None:
        raise HTTPException(404, f"request {span_id} is not (or no longer) kept in session {s.id}: the newest "
                                 "5,000 requests, each second's slowest, and the ones opened before (pinned) are")
    if timeline is None and hasattr(s, "timeline_of"):  # a recording: correlated again up to the request
        timeline = _named(s.timeline_of(span_id), names)
    return {"span": d, "timeline": timeline or [], "timeline_kept": timeline is not None,
            "threads": thread_names(s.header)}


def thread_names(header: dict) -> dict[str, str]:
    """QEMU's threads as the page names them (tid -> "iothread0", "main loop", ...): what qspan saw at attach."""
    out = {}
    for th in header.get("target", {}).get("threads", []):
        role, name = th.get("role"), th.get("name") or ""
        out[str(th["tid"])] = ("main loop" if role == "main" else f"vCPU {name}" if role == "vcpu" and name
                               else name or th.get("comm") or "thread")
    return out


@sessions_router.post("/{sid}/spans/{span_id}/pin", summary="keep a request for the session's lifetime (a permalink's)")
def pin(s: Session, span_id: int) -> dict:
    with s.locked():
        if not s.store.pin(span_id):
            raise HTTPException(404, f"request {span_id} is not (or no longer) kept in session {s.id}")
    return {"pinned": span_id}


@sessions_router.get("/{sid}/charts", summary="what the dashboard draws for a view: scope, op, window or range")
def view_charts(s: Session, scope: str = "all", op: str | None = None,
                window_s: Annotated[int, Query(description="10, 60, 600, or 0: since the start")] = 60,
                from_s: float | None = None, to_s: float | None = None) -> dict:
    try:
        view = parse_view({"scope": scope, "op": op, "window_s": window_s,
                           "range_s": [from_s, to_s] if from_s is not None and to_s is not None else None})
    except ViewError as err:
        raise QspanError(str(err)) from None
    with s.locked():
        return {"view": view.key, "scopes": scope_choices(s.store.windows), "charts": charts(s.store.windows, view),
                "slowest": [span_dict(x) for x in slowest(s.store.windows, s.store.ring, view)]}


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
