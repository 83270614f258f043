"""build_state / run_server: from configs to a running uvicorn server (shared by `glmv serve` and tests)."""

from __future__ import annotations

import logging

from glmv.backends.factory import build_engine
from glmv.config import EngineConfig, ModelConfig
from glmv.engine.beside_loop import engine_wants_main_thread, run_beside_engine_loop
from glmv.inputs.processor import PromptBuilder
from glmv.models.loader import resolve_model
from glmv.server.state import ServerConfig, ServingState

log = logging.getLogger("glmv.server")


def build_state(engine_config: EngineConfig, server_config: ServerConfig) -> ServingState:
    path = resolve_model(engine_config.model, hub=engine_config.hub, revision=engine_config.revision)
    model_config = ModelConfig.from_dir(path, engine_config.generation_config)
    builder = PromptBuilder(path, engine_config.chat_template, media_cache_bytes=engine_config.media_cache_bytes,
                            patch_cache_bytes=engine_config.mm_processor_cache_bytes)
    log.info("loading %s with the %s engine on %s", path, engine_config.engine, engine_config.resolved_device)
    if server_config.cuda_memory_history is not None:
        from glmv.server.debug import start_cuda_memory_history

        start_cuda_memory_history()  # before the weights, so every allocation is attributed
    engine = build_engine(model_config, engine_config, builder.tokenizer)
    names = server_config.served_model_names or (engine_config.model,)
    return ServingState(engine=engine, builder=builder, model_config=model_config, engine_config=engine_config,
                        server_config=server_config, model_names=tuple(names))


def run_server(engine_config: EngineConfig, server_config: ServerConfig) -> None:
    import uvicorn

    from glmv.server.app import create_app

    state = build_state(engine_config, server_config)
    app = create_app(state)
    root = f"http://{server_config.host}:{server_config.port}{server_config.root_path.rstrip('/')}"
    log.info("serving %s on %s/v1", ", ".join(state.model_names), root)
    log.info("chat page: %s/   API docs: %s/docs", root, root)
    config = uvicorn.Config(app, host=server_config.host, port=server_config.port, log_level=server_config.log_level,
                            access_log=not server_config.disable_uvicorn_access_log,
                            root_path=server_config.root_path, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if engine_wants_main_thread(engine_config):
        _serve_beside_engine_loop(server, state.engine)
    else:
        server.run()


def _serve_beside_engine_loop(server, engine) -> None:
    """HTTP in a thread, the engine loop in this (main) thread (glmv/engine/beside_loop.py). Ctrl-C and SIGTERM shut
    the server down gracefully; a server that cannot start (a port in use) exits non-zero, uvicorn having said why."""
    import signal

    def ask_to_exit(*_: object) -> None:
        server.should_exit = True

    previous = signal.signal(signal.SIGTERM, ask_to_exit)
    try:
        run_beside_engine_loop(engine, server.serve, stop_door=ask_to_exit)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise SystemExit(1)
