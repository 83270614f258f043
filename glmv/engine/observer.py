"""StepObserver: the hooks a benchmark or a profiler hangs on the engine's step, instead of patching its methods.

Every hook runs on the engine's thread, inside the step, so it must be cheap; the base class does nothing, and an
engine without an observer calls these no-ops (a handful of calls per step). `LLMEngine.observe(observer)` hands
one to the engine and its model runner.
"""

from __future__ import annotations

import torch


class StepObserver:
    """Override what you need. Times are host seconds (time.perf_counter differences)."""

    # CUDA events around every graphed decode step (input copies + replay): only recorded when asked for,
    # since each pair costs two event records per step.
    wants_graph_events: bool = False

    def step_started(self) -> None:
        """Before the step schedules."""

    def launched(self, prefill_tokens: int, decode_rows: int) -> None:
        """The step's device work is queued: how many prompt tokens and single-token decode rows it runs."""

    def waited(self, seconds: float) -> None:
        """The host blocked this long for a step's sampled tokens."""

    def step_finished(self) -> None:
        """After the step handed out its outputs."""

    def request_added(self, seconds: float) -> None:
        """add_request took this long (request objects, positions, hashing)."""

    def pixels_uploaded(self, seconds: float) -> None:
        """Host time of one pixel upload (conversion to the model dtype + the asynchronous copy)."""

    def decode_graph_ran(self, start: torch.cuda.Event, end: torch.cuda.Event, rows: int) -> None:
        """A graphed decode step of `rows` real rows ran between these events (with wants_graph_events)."""


NO_OBSERVER = StepObserver()
