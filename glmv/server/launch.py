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
    config = uvicorn.Config(app, host=server_config.host, port=server_config.port, log_level=server_config.log_level,
                            access_log=not server_config.disable_uvicorn_access_log,
                            root_path=server_config.root_path, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if _engine_wants_main_thread(state.engine, engine_config):
        _serve_beside_engine_loop(server, state.engine)
    else:
        server.run()


def _engine_wants_main_thread(engine: object, engine_config: EngineConfig) -> bool:
    """glmv's engine on the CPU runs its loop in the main thread (glmv/engine/async_engine.py says why)."""
    from glmv.engine.async_engine import AsyncEngine

    return isinstance(engine, AsyncEngine) and engine_config.resolved_device == "cpu"


def _serve_beside_engine_loop(server, engine) -> None:
    """HTTP in a thread, the engine loop in this (main) thread. Ctrl-C and SIGTERM shut the server down gracefully;
    the server's shutdown stops the loop, and a server that fails to start stops it too."""
    import asyncio
    import signal
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from glmv.cpu.runtime import use_one_openmp_thread

    async def serve() -> None:
        # I/O workers (media decoding) and the server thread run PyTorch ops as teams of one (glmv/cpu/runtime.py)
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(thread_name_prefix="glmv-io", initializer=use_one_openmp_thread))
        await server.serve()

    def http_thread() -> None:
        use_one_openmp_thread()
        try:
            asyncio.run(serve())
        except SystemExit:  # uvicorn could not start (a port in use, say) and has logged why
            pass
        except Exception:  # noqa: BLE001 - logged; the engine loop is stopped below either way
            log.exception("the HTTP server stopped")
        finally:
            engine.stop_loop()

    def ask_to_exit(*_: object) -> None:
        server.should_exit = True

    previous = signal.signal(signal.SIGTERM, ask_to_exit)
    thread = threading.Thread(target=http_thread, name="glmv-http", daemon=True)
    try:
        engine.run_loop(on_ready=thread.start)
    except KeyboardInterrupt:
        log.info("interrupted; shutting down")
    finally:
        ask_to_exit()
        if thread.is_alive():
            thread.join(30)
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise SystemExit(1)
