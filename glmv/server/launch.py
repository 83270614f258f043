"""build_state / run_server: from configs to a running uvicorn server (shared by `glmv serve` and tests)."""

from __future__ import annotations

import logging

from glmv.config import EngineConfig, ModelConfig
from glmv.engine.factory import build_engine
from glmv.inputs.processor import PromptBuilder
from glmv.models.loader import resolve_model
from glmv.server.state import ServerConfig, ServingState

log = logging.getLogger("glmv.server")


def build_state(engine_config: EngineConfig, server_config: ServerConfig) -> ServingState:
    path = resolve_model(engine_config.model, hub=engine_config.hub, revision=engine_config.revision)
    model_config = ModelConfig.from_dir(path, engine_config.generation_config)
    builder = PromptBuilder(path, engine_config.chat_template)
    log.info("loading %s with the %s engine on %s", path, engine_config.engine, engine_config.resolved_device)
    engine = build_engine(model_config, engine_config, builder.tokenizer)
    names = server_config.served_model_names or (engine_config.model,)
    return ServingState(engine=engine, builder=builder, model_config=model_config, engine_config=engine_config,
                        server_config=server_config, model_names=tuple(names))


def run_server(engine_config: EngineConfig, server_config: ServerConfig) -> None:
    import uvicorn

    from glmv.server.app import create_app

    state = build_state(engine_config, server_config)
    app = create_app(state)
    log.info("serving %s on http://%s:%d/v1", ", ".join(state.model_names), server_config.host, server_config.port)
    uvicorn.run(app, host=server_config.host, port=server_config.port, log_level=server_config.log_level,
                access_log=not server_config.disable_uvicorn_access_log, root_path=server_config.root_path,
                timeout_graceful_shutdown=5)
