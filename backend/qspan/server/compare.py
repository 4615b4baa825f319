"""The before-and-after route: two sessions, or two windows of one, compared (output/compare.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from qspan.errors import QspanError
from qspan.output import compare as comparison
from .deps import Manager

router = APIRouter(prefix="/api/compare", tags=["compare"])

Since = Annotated[int, Query(ge=0, description="only spans that ended at or after this (CLOCK_MONOTONIC ns)")]
Until = Annotated[int | None, Query(ge=0, description="only spans that started at or before this")]


def _side(manager, sid: str, since_ns: int, until_ns: int | None) -> list[dict]:
    s = manager.get(sid)  # NoSuchSession: 404
    with s.locked():
        spans = s.store.query(since_ns, until_ns, None, 0, 1 << 30)
        kept = s.store.spans_kept
        oldest, newest = s.store.oldest_end_ns, s.store.newest_end_ns
    if not spans:
        # the store keeps the newest spans only: say what it has, so a window before it is understood
        have = f"; it keeps its newest {kept:,} spans, which ended over the last {(newest - oldest) / 1e9:.1f} s" \
            if kept else "; it has none yet"
        raise QspanError(f"session {sid} has no spans in the window asked for{have}")  # 422
    return spans


@router.get("", summary="where the latency difference between A and B went (schema qspan.compare/1)")
def compare(manager: Manager, a: str, b: str, a_since_ns: Since = 0, a_until_ns: Until = None,
            b_since_ns: Since = 0, b_until_ns: Until = None) -> dict:
    out = comparison.compare(_side(manager, a, a_since_ns, a_until_ns), _side(manager, b, b_since_ns, b_until_ns))
    out["a"] = {"session": a, "since_ns": a_since_ns, "until_ns": a_until_ns}
    out["b"] = {"session": b, "since_ns": b_since_ns, "until_ns": b_until_ns}
    return out
