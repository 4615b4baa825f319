"""What routes depend on, as Annotated aliases: the manager, the settings, a session by id."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from qspan.live import LiveSession
from .sessions import SessionManager
from .settings import Settings


def get_manager(conn: HTTPConnection) -> SessionManager:
    return conn.app.state.manager


def get_settings(conn: HTTPConnection) -> Settings:
    return conn.app.state.settings


Manager = Annotated[SessionManager, Depends(get_manager)]
AppSettings = Annotated[Settings, Depends(get_settings)]


def get_session(sid: str, manager: Manager) -> LiveSession:
    return manager.get(sid)  # NoSuchSession: 404, by the app's QspanError handler


Session = Annotated[LiveSession, Depends(get_session)]


def token_ok(given: str | None, settings: Settings) -> bool:
    """True when the server needs no token or `given` is it (compared in constant time; REST and WebSocket)."""
    if not settings.token:
        return True
    # bytes: compare_digest refuses str with non-ASCII characters, and a query string may hold any
    return hmac.compare_digest((given or "").encode(), settings.token.encode())
