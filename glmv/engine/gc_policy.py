"""When Python's garbage collector may run while the engine serves.

Why: the engine thread launches a decode step, then needs the GIL back within one step's time (~8 ms at 64 rows on
an H100) to launch the next, or the device goes idle. A collection holds the GIL for as long as it takes, in
whichever thread allocated the object that tripped it (often the server's event loop). Measured with
bench/gpu_bench.py at 64 concurrent requests (H100): a full pass over the start-up heap (model, tokenizer,
libraries) took 230-330 ms, and passes over younger objects up to 10 ms; with collection automatic (Python's
default, or the start-up heap frozen), 12 of 509-750 steps were followed by over 1 ms of idle device in some runs
(steady 7,680-7,980 tok/s); managed, 0-1 such gaps in 750 steps in every run (8,043-8,092 tok/s).

Modes (GLMV_GC, default "managed"):
- "managed": at start the heap is collected once and frozen (moved out of the collector's reach), automatic
  collection is switched off, and the engine collects itself right after it launched a step (`collect_if_due`),
  when the device has the most work queued (and while idle, every half second): the young generation every
  YOUNG_THRESHOLD tracked allocations (short passes), the middle one every tenth time as Python does, and the old
  one (objects made since start-up) only every OLD_EVERY middle passes, since an explicit full pass skips Python's
  own rule that keeps those rare.
  While a request waits for its first token (`waiting`), nothing is collected: a pass would sit between its
  arrival and its prefill. Only if the young generation grows past WAITING_CEILING is it collected anyway (a young
  pass is short; the middle and old ones wait for the first moment nobody does).
- "freeze": the start-up heap is frozen; collection otherwise as Python does it.
- "python": Python's default.
`stop()` puts back what `start()` changed: a dropped engine's objects can be collected again.
"""

from __future__ import annotations

import gc

MODES = ("managed", "freeze", "python")
YOUNG_THRESHOLD = 2_000  # tracked allocations (net) before the young generation is collected
OLD_EVERY = 100  # middle-generation passes between two passes over the old generation
WAITING_CEILING = 50 * YOUNG_THRESHOLD  # young allocations tolerated while requests wait for a first token


class GcPolicy:
    def __init__(self, mode: str = "managed"):
        if mode not in MODES:
            raise ValueError(f"GLMV_GC must be one of {', '.join(MODES)}; got {mode!r}")
        self.mode = mode
        self._froze = False
        self._disabled = False
        self.collections = [0, 0, 0]  # passes run by collect_if_due, per generation
        self.deferred = 0  # times a due collection waited because a request was waiting for its first token

    def start(self) -> None:
        if self.mode == "python":
            return
        gc.collect()
        gc.freeze()
        self._froze = True
        if self.mode == "managed" and gc.isenabled():
            gc.disable()
            self._disabled = True

    def collect_if_due(self, waiting: bool = False) -> None:
        """Run the collection that is due, if any (managed mode only); `waiting`: a request waits for its first
        token, so only a young pass past WAITING_CEILING may run."""
        if not self._disabled:
            return
        young, middle, old = gc.get_count()
        if young < YOUNG_THRESHOLD:
            return
        if waiting:
            if young < WAITING_CEILING:
                self.deferred += 1
                return
            gc.collect(0)
            self.collections[0] += 1
            return
        t1 = gc.get_threshold()[1]
        generation = 0 if middle < t1 else 1 if old < OLD_EVERY else 2
        gc.collect(generation)
        self.collections[generation] += 1

    def stop(self) -> None:
        if self._disabled:
            gc.enable()
            self._disabled = False
        if self._froze:
            gc.unfreeze()
            self._froze = False

    def switch(self, mode: str) -> None:
        """Another mode from now on (benchmarks compare them in one process; call while the loop is idle)."""
        if mode not in MODES:
            raise ValueError(f"unknown GC mode {mode!r}")
        self.stop()
        self.mode = mode
        self.start()
