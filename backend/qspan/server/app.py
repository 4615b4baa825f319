"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from qspan import __version__
from qspan import resources
from qspan.errors import QspanError
from . import api, compare, exports, host, metrics, ws
from .deps import token_ok
from .sessions import SessionManager
from .settings import Settings

log = logging.getLogger("qspan.server")

# pip installs packages as plain directories, so the resource is a real path StaticFiles can serve.
FRONTEND = Path(str(resources.frontend()))
TICK_S = 0.1


async def qspan_error(request: Request, err: QspanError) -> JSONResponse:
    """Every QspanError a route lets through: {"detail": str(err)} with the error's own HTTP status."""
    status = err.http_status
    # expected: one line, no traceback; the ones the host must fix (no bpftrace, not root) louder
    log.log(logging.WARNING if status >= 500 else logging.INFO, "%s %s: %d %s",
            request.method, request.url.path, status, err)
    return JSONResponse({"detail": str(err)}, status_code=status)


def create_app(settings: Settings | None = None, manager: SessionManager | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.check()
    manager = manager or SessionManager(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def ticker():
            while True:
                try:
                    await asyncio.to_thread(manager.tick)
                except Exception:  # a dead ticker would stop every session's correlation and pruning
                    log.exception("session manager tick failed")
                await asyncio.sleep(TICK_S)

        task = asyncio.create_task(ticker())
        if settings.follow_all:
            manager.follower = host.HostFollower(manager)
            manager.follower.start()
        try:
            yield
        finally:
            task.cancel()
            if manager.follower:
                await asyncio.to_thread(manager.follower.stop)
            await asyncio.to_thread(manager.shutdown)

    app = FastAPI(title="qspan", version=__version__, lifespan=lifespan,
                  description="Live per-request latency tracing for QEMU block I/O.")
    app.state.settings = settings
    app.state.manager = manager
    app.add_exception_handler(QspanError, qspan_error)

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if not settings.host_ok(request.headers.get("host")):
            return JSONResponse({"detail": "this server answers to loopback names only"}, status_code=421)
        # scope["path"] is what the router dispatches on; request.url is rebuilt from the Host
        # header, which a client chooses (a Host with "/" or "?" in it could move url.path)
        path = request.scope["path"]
        if settings.token and (path.startswith("/api") or path == "/metrics"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ") or request.query_params.get("token", "")
            if not token_ok(given, settings):
                return JSONResponse({"detail": "token required"}, status_code=401)
        return await call_next(request)

    app.include_router(api.processes_router)
    app.include_router(api.sessions_router)
    app.include_router(exports.router)
    app.include_router(compare.router)
    app.include_router(metrics.router)
    app.include_router(host.router)
    app.include_router(ws.router)
    app.mount("/static", StaticFiles(directory=FRONTEND), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)  # none: a browser's console stays free of a 404 for it

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(FRONTEND / "index.html")

    return app
