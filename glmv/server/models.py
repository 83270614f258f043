"""GET /v1/models (one card per served name), GET /v1/models/{id}, GET /health, GET /version."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from glmv import __version__
from glmv.engine.client import ReplicatedEngine
from glmv.server.errors import APIError
from glmv.server.protocol import ModelCard, ModelList, ModelPermission, VersionResponse
from glmv.server.state import ServingState

router = APIRouter()


def model_card(state: ServingState, name: str) -> ModelCard:
    return ModelCard(id=name, created=state.created, owned_by="glmv", root=str(state.model_config.path),
                     max_model_len=state.max_model_len, permission=[ModelPermission(created=state.created)])


@router.get("/v1/models", response_model=ModelList, summary="List the served model names")
async def list_models(raw: Request) -> ModelList:
    state: ServingState = raw.app.state.serving
    return ModelList(data=[model_card(state, name) for name in state.model_names])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, summary="Describe one served model")
async def retrieve_model(model_id: str, raw: Request) -> ModelCard:
    state: ServingState = raw.app.state.serving
    if model_id not in state.model_names:
        raise APIError(404, f"The model '{model_id}' does not exist. Served models: {', '.join(state.model_names)}.",
                       "model", "model_not_found")
    return model_card(state, model_id)


@router.head("/health", include_in_schema=False)  # uptime checkers probe with HEAD
@router.get("/health", summary="200 while the server can take requests")
async def health(raw: Request) -> JSONResponse:
    engine = raw.app.state.serving.engine
    if isinstance(engine, ReplicatedEngine):  # "degraded" (200) while a replica restarts; 503 when none is up
        report = engine.health()
        return JSONResponse(report.as_json(), status_code=200 if report.serving else 503)
    return JSONResponse({"status": "ok"})


@router.get("/version", response_model=VersionResponse, summary="glmv's version")
async def version() -> VersionResponse:
    return VersionResponse(version=__version__)
