"""ServerConfig and ServingState: what the routes share (engine, prompt builder, names, limits)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from glmv.config import EngineConfig, ModelConfig
from glmv.engine.client import EngineClient
from glmv.inputs.messages import MediaPolicy
from glmv.inputs.processor import PromptBuilder


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_names: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()
    root_path: str = ""
    allowed_origins: tuple[str, ...] = ()
    allow_credentials: bool = False
    allowed_methods: tuple[str, ...] = ("*",)
    allowed_headers: tuple[str, ...] = ("*",)
    log_level: str = "info"
    max_request_bytes: int = 64 << 20
    limit_mm_per_prompt: dict[str, int] = field(default_factory=lambda: {"image": 300, "video": 1, "document": 1})
    allowed_local_media_path: Path | None = None
    allowed_media_domains: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}.")
        for key in self.limit_mm_per_prompt:
            if key not in ("image", "video", "document"):
                raise ValueError(f"--limit-mm-per-prompt: unknown modality {key!r} (image, video, document).")

    @property
    def media_policy(self) -> MediaPolicy:
        return MediaPolicy(
            allowed_local_media_path=self.allowed_local_media_path,
            allowed_media_domains=self.allowed_media_domains,
            max_images=self.limit_mm_per_prompt.get("image", 300),
            max_videos=self.limit_mm_per_prompt.get("video", 1),
            max_documents=self.limit_mm_per_prompt.get("document", 1),
        )


@dataclass
class ServingState:
    engine: EngineClient
    builder: PromptBuilder
    model_config: ModelConfig
    engine_config: EngineConfig
    server_config: ServerConfig
    model_names: tuple[str, ...]
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def default_name(self) -> str:
        return self.model_names[0]

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len
