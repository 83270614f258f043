"""Run a door's event loop in a second thread while the calling (main) thread runs glmv's engine loop.

Why: on the CPU, glmv's engine loop must run in the main thread to get GNU OpenMP's full spin-waits
(glmv/engine/async_engine.py). `glmv serve` and the in-process `glmv batch` use this: the door (uvicorn, or the batch
client) gets its own asyncio loop in a thread whose PyTorch ops, like those of its I/O workers, run single-threaded
(glmv/cpu/runtime.py). The door ending stops the engine loop; Ctrl-C in the main thread stops the engine loop and
asks the door to finish (its `stop_door`, or a cancel of its task), then raises KeyboardInterrupt to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from glmv.config import EngineConfig
from glmv.cpu.runtime import use_one_openmp_thread

log = logging.getLogger("glmv.server")

T = TypeVar("T")


def engine_wants_main_thread(engine_config: EngineConfig) -> bool:
    """glmv's engine on the CPU runs its loop in the main thread (data-parallel replicas: in theirs)."""
    return engine_config.engine == "glmv" and engine_config.resolved_device == "cpu" and \
        engine_config.data_parallel_size == 1


def run_beside_engine_loop(engine: Any, door: Callable[[], Coroutine[Any, Any, T]],
                           stop_door: Callable[[], None] | None = None) -> T:
    """Run `door()` on an asyncio loop in a second thread and the engine loop (`engine.run_loop`) here until the door
    returns; return its result or raise its exception. `stop_door` asks a door to finish gracefully on Ctrl-C
    (default: cancel its task)."""
    outcome: dict[str, Any] = {}
    running: dict[str, Any] = {}

    async def main() -> T:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="glmv-io", initializer=use_one_openmp_thread))
        running["loop"], running["task"] = loop, asyncio.current_task()
        return await door()

    def body() -> None:
        use_one_openmp_thread()
        try:
            outcome["value"] = asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread below
            outcome["error"] = exc
        finally:
            engine.stop_loop()

    def stop() -> None:
        if stop_door is not None:
            stop_door()
        elif "task" in running:
            try:
                running["loop"].call_soon_threadsafe(running["task"].cancel)
            except RuntimeError:  # its loop closed meanwhile: the door has finished
                pass

    thread = threading.Thread(target=body, name="glmv-door", daemon=True)
    interrupted = ended_by_door = False
    try:
        engine.run_loop(on_ready=thread.start)
        ended_by_door = True  # the loop returns only once stopped: by the door's shutdown, or its end
    except KeyboardInterrupt:
        interrupted = True
        log.info("interrupted; shutting down")
    finally:
        if thread.is_alive():
            if not ended_by_door:  # Ctrl-C or a failed loop: ask the door to finish (else it is finishing)
                stop()
            thread.join(30)
    if interrupted:
        raise KeyboardInterrupt
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
