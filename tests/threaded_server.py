"""An ASGI app under a real uvicorn on a free 127.0.0.1 port, in a daemon thread: the one way the live-server
fixtures of tests/server, tests/backends and the door tests (tests/cli/live_server.py) start their servers."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import uvicorn


@dataclass
class ThreadedServer:
    url: str  # http://127.0.0.1:PORT
    server: uvicorn.Server = field(repr=False)
    thread: threading.Thread = field(repr=False)

    def stop(self, timeout: float = 30) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout)


def serve_in_thread(app, name: str = "glmv-test", root_path: str = "") -> ThreadedServer:
    """Serve `app`; returns once uvicorn accepts connections (RuntimeError if it does not within a minute)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, root_path=root_path,
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"{name}-{port}")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the test server {name} did not start")
        time.sleep(0.02)
    return ThreadedServer(f"http://127.0.0.1:{port}", server, thread)
