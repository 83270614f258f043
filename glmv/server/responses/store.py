"""ResponseStore: stored responses in memory, bounded by count (least recently used first out).

A stored response keeps its body (GET /v1/responses/{id}) and the conversation a following response continues
(`previous_response_id`): its history, input and output as chat messages, instructions left out as OpenAI does.
Nothing outlives the process; the bound is `glmv serve --max-stored-responses`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from glmv.lru import LruCache


@dataclass(frozen=True)
class StoredResponse:
    body: dict[str, Any]  # the response object as it was returned
    conversation: list[dict[str, Any]]  # chat messages a continuation starts from


class ResponseStore:
    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"--max-stored-responses must be 0 or more, got {capacity}.")
        self.capacity = capacity
        self._items: LruCache[str, StoredResponse] = LruCache(capacity)

    @property
    def evicted(self) -> int:
        return self._items.evicted

    def put(self, response_id: str, stored: StoredResponse) -> None:
        self._items.put(response_id, stored)

    def get(self, response_id: str) -> StoredResponse | None:
        return self._items.get(response_id)

    def delete(self, response_id: str) -> bool:
        return self._items.pop(response_id) is not None

    def __len__(self) -> int:
        return len(self._items)
