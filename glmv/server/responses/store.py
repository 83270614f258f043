"""ResponseStore: stored responses in memory, bounded by count (least recently used first out).

A stored response keeps its body (GET /v1/responses/{id}) and the conversation a following response continues
(`previous_response_id`): its history, input and output as chat messages, instructions left out as OpenAI does.
Nothing outlives the process; the bound is `glmv serve --max-stored-responses`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StoredResponse:
    body: dict[str, Any]  # the response object as it was returned
    conversation: list[dict[str, Any]]  # chat messages a continuation starts from


class ResponseStore:
    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"--max-stored-responses must be 0 or more, got {capacity}.")
        self.capacity = capacity
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def put(self, response_id: str, stored: StoredResponse) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[response_id] = stored
            self._items.move_to_end(response_id)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
                self.evicted += 1

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            stored = self._items.get(response_id)
            if stored is not None:
                self._items.move_to_end(response_id)
            return stored

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._items.pop(response_id, None) is not None

    def __len__(self) -> int:
        return len(self._items)
