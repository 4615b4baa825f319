"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from qspan import __version__
from qspan import resources
from .api import router
from .sessions import SessionManager
from .settings import Settings

# pip installs packages as plain directories, so the resource is a real path StaticFiles can serve.
FRONTEND = Path(str(resources.frontend()))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.check()
    manager = SessionManager(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def ticker():
            while True:
                await asyncio.to_thread(manager.tick)
                await asyncio.sleep(0.1)

        task = asyncio.create_task(ticker())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.to_thread(manager.shutdown)

    app = FastAPI(title="qspan", version=__version__, lifespan=lifespan,
                  description="Live per-request latency tracing for QEMU block I/O.")
    app.state.settings = settings
    app.state.manager = manager

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if settings.token and request.url.path.startswith("/api"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ") or request.query_params.get("token", "")
            if not hmac.compare_digest(given, settings.token):
                return JSONResponse({"detail": "token required"}, status_code=401)
        return await call_next(request)

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=FRONTEND), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(FRONTEND / "index.html")

    return app
