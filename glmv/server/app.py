"""create_app: the FastAPI application: routers, middlewares (outermost first), error handlers, engine lifecycle.

Middleware order, outermost first: response counting (sees every status, 401/413 included), CORS (so browsers get
their headers on errors too), API-key auth (before any body is read), body guard (413/415 before parsing).
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from glmv import __version__
from glmv.server import chat, completions, metrics, models, tokenize
from glmv.server.auth import APIKeyAuth
from glmv.server.docs_page import mount_docs
from glmv.server.errors import install_error_handlers
from glmv.server.middleware import RequestBodyGuard, ResponseCounter
from glmv.server.responses import route as responses
from glmv.server.state import ServingState
from glmv.ui.routes import mount_ui

log = logging.getLogger("glmv.server")

DESCRIPTION = """An OpenAI-compatible server for GLM-4.1V-Thinking (images, video, documents, reasoning).
Clients of `vllm serve` work unchanged; see docs/API.md for fields, extras and errors."""


def create_app(state: ServingState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(served: FastAPI):
        await state.engine.start()
        try:
            cfg = state.server_config
            ec = state.engine_config
            if cfg.warmup:
                from glmv.server.warmup import warm_http, warm_up

                if ec.engine == "glmv" and ec.data_parallel_size == 1:
                    log.info("warm-up requests took %.1f s", await warm_up(state))
                await warm_http(served)
            yield
        finally:
            await state.engine.shutdown()

    cfg = state.server_config
    # --root-path is given to uvicorn (launch.py), which puts it in every request's scope, as FastAPI advises.
    app = FastAPI(title="glmv", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # Swagger/ReDoc come from a CDN: docs_page.py works offline
    app.state.serving = state
    install_error_handlers(app)
    for module in (models, chat, completions, responses, tokenize, metrics):
        app.include_router(module.router)
    if cfg.cuda_memory_history is not None:
        from glmv.server import debug

        app.include_router(debug.router)
    mount_docs(app)
    mount_ui(app)  # the web chat page at / and /ui: a client of this same /v1 API (docs/DOORS.md)

    # add_middleware wraps: the last one added runs first.
    app.add_middleware(RequestBodyGuard, max_bytes=cfg.max_request_bytes)
    if cfg.api_keys:
        app.add_middleware(APIKeyAuth, api_keys=cfg.api_keys)
    if cfg.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.allowed_origins),
            allow_credentials=cfg.allow_credentials,
            allow_methods=list(cfg.allowed_methods),
            allow_headers=list(cfg.allowed_headers),
        )
    known = frozenset(getattr(r, "path", "") for r in app.routes)
    app.add_middleware(ResponseCounter, metrics=state.metrics, known_paths=known)
    return app
