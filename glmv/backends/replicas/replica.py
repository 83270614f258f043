"""Replica: one engine replica's process, as the server sees it: how it is launched, whether it is up, its restarts.

The process itself is the vLLM backend's worker-process machinery (glmv/backends/vllm_process.py: a Unix socket in a
private folder, a one-time token, its log forwarded, a reader thread) running glmv's own replica worker
(worker.py) with the server's Python. One replica owns one GPU (CUDA_VISIBLE_DEVICES) or, on a CPU host, a share of
the cores (its torch thread count).
"""

from __future__ import annotations

import enum
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from glmv.backends.vllm_process import VllmProcess

log = logging.getLogger("glmv.replicas")


class ReplicaStartError(ValueError):
    """A replica could not start; a ValueError so `glmv serve` prints the message as one paragraph."""


class ReplicaState(enum.StrEnum):
    STARTING = "starting"
    UP = "up"
    DOWN = "down"  # died; a restart is under way
    STOPPED = "stopped"  # shut down on purpose


@dataclass(frozen=True)
class ReplicaLaunch:
    """How to start replica `index`: its engine settings (as wire builtins) and its share of the machine."""

    index: int
    model_path: str
    engine_config: dict[str, Any]
    cuda_device: str | None  # the physical GPU it sees as cuda:0; None on a CPU host
    torch_threads: int
    startup_timeout_s: float
    drain_timeout_s: float

    def env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(self.torch_threads))
        if self.cuda_device is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.cuda_device
        return env

    def config(self) -> dict[str, Any]:
        return {"engine_config": self.engine_config, "model_path": self.model_path,
                "torch_threads": self.torch_threads, "drain_timeout_s": self.drain_timeout_s}


class Replica:
    """The server's handle on one replica. `start()` blocks until its model is loaded (or raises ReplicaStartError);
    after that, `on_message(index, msg)` runs on its reader thread for each message and `on_exit(index, reason)`
    once when the process ends."""

    def __init__(self, launch: ReplicaLaunch, on_message: Callable[[int, dict[str, Any]], None],
                 on_exit: Callable[[int, str], None]):
        self.launch = launch
        self.index = launch.index
        self.state = ReplicaState.STARTING
        self.restarts = 0
        self.pid: int | None = None
        self.max_model_len = 0
        self.stats: dict[str, float] = {}
        self._process: VllmProcess | None = None
        self._on_message = on_message
        self._on_exit = on_exit

    @property
    def up(self) -> bool:
        return self.state is ReplicaState.UP

    def start(self) -> None:
        old, self._process = self._process, None
        if old is not None:
            old.close(timeout_s=5)
        self.state = ReplicaState.STARTING
        process = VllmProcess(sys.executable, self.launch.env(), self.launch.startup_timeout_s,
                              command=[sys.executable, "-m", "glmv.backends.replicas.worker"],
                              label=f"glmv replica {self.index}", logger=log, start_error=ReplicaStartError)
        ready = process.start(self.launch.config())
        self._process = process
        self.pid = int(ready["pid"])
        self.max_model_len = int(ready["max_model_len"])
        self.stats = {}
        self.state = ReplicaState.UP
        process.listen(lambda msg: self._on_message(self.index, msg), lambda reason: self._on_exit(self.index, reason))

    def send(self, msg: dict[str, Any]) -> None:
        """Raises ConnectionError / OSError when the replica is gone."""
        if self._process is None:
            raise ConnectionError(f"glmv replica {self.index} is not running")
        self._process.send(msg)

    def stop(self, timeout_s: float) -> None:
        """Ask it to finish what it runs and exit (its process group is ended after `timeout_s`)."""
        self.state = ReplicaState.STOPPED
        if self._process is not None:
            self._process.close(timeout_s=timeout_s)
