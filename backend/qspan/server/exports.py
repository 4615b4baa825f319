"""Export routes: a session's spans as qspan.spans/1 JSON or as a Chrome trace for Perfetto."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from qspan.live import LiveSession
from qspan.output import chrome
from .deps import Session

router = APIRouter(prefix="/api/sessions/{sid}/export", tags=["exports"])

Since = Annotated[int, Query(ge=0)]
Until = Annotated[int | None, Query(ge=0)]
Scope = Annotated[str, Query(max_length=300, pattern=r"^(all|disk:.+|node:.+)$",
                             description='"all", "disk:NAME" or "node:NAME": the dashboard\'s selection')]
Op = Annotated[str | None, Query(pattern=r"^(read|write|flush|copy|job:.+)$")]


def _spans(s: LiveSession, since_ns: int, until_ns: int | None, scope: str = "all", op: str | None = None) -> list[dict]:
    """The kept spans of the ring (every request of its stretch) that match."""
    with s.locked():
        return s.store.search(since_ns, until_ns, op, 0, 1 << 30, scope, ring_only=True)["spans"]


def _download(doc: dict, name: str) -> JSONResponse:
    return JSONResponse(doc, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/spans.json", summary="spans JSON (schema qspan.spans/1)")
def export_spans(s: Session, since_ns: Since = 0, until_ns: Until = None, scope: Scope = "all",
                 op: Op = None) -> JSONResponse:
    # the session builds it with the CLI's builder (output/document.py): the same document of the same stream
    return _download(s.document(_spans(s, since_ns, until_ns, scope, op)), f"qspan-{s.id}-spans.json")


@router.get("/perfetto.json", summary="Chrome trace-event JSON for Perfetto")
def export_perfetto(s: Session, since_ns: Since = 0, until_ns: Until = None, scope: Scope = "all",
                    op: Op = None) -> JSONResponse:
    spans = _spans(s, since_ns, until_ns, scope, op)
    with s.locked():
        timelines = {x["id"]: s.store.timelines[x["id"]].dicts() for x in spans if x["id"] in s.store.timelines}
    return _download(chrome.chrome_trace(spans, timelines, s.header), f"qspan-{s.id}-perfetto.json")
