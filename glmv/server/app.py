"""create_app: the FastAPI application with its routes, error handlers and lifecycle."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from glmv import __version__
from glmv.server.chat import chat_completions
from glmv.server.errors import install_error_handlers
from glmv.server.protocol import ChatCompletionRequest, ModelCard, ModelList
from glmv.server.state import ServingState


def create_app(state: ServingState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        await state.engine.start()
        try:
            yield
        finally:
            await state.engine.shutdown()

    app = FastAPI(title="glmv", version=__version__, lifespan=lifespan, root_path=state.server_config.root_path)
    app.state.serving = state
    install_error_handlers(app)
    cfg = state.server_config
    if cfg.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.allowed_origins),
            allow_credentials=cfg.allow_credentials,
            allow_methods=list(cfg.allowed_methods),
            allow_headers=list(cfg.allowed_headers),
        )

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/version")
    async def version() -> dict:
        return {"version": __version__}

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[
            ModelCard(id=name, created=state.created, root=str(state.model_config.path), owned_by="glmv",
                      max_model_len=state.max_model_len)
            for name in state.model_names
        ])

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, raw: Request):
        return await chat_completions(req, raw, state)

    return app
