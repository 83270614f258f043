"""ServerConfig and ServingState: what the routes share (engine, prompt builder, names, limits, metrics)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from glmv.config import EngineConfig, ModelConfig
from glmv.engine.client import EngineClient, ReplicatedEngine
from glmv.inputs.cache import CacheUsage
from glmv.inputs.messages import MediaPolicy
from glmv.inputs.processor import PromptBuilder
from glmv.server.metrics import ServerMetrics
from glmv.server.responses.store import ResponseStore
from glmv.structured.compiler import GrammarCompiler
from glmv.tools import ToolFormat, detect_tool_format


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
    disable_log_requests: bool = False  # no per-request log line
    warmup: bool = True  # glmv's engine runs the warm-up requests (server/warmup.py) before it answers
    disable_uvicorn_access_log: bool = False
    max_request_bytes: int = 64 << 20  # bodies above this are refused with 413 before parsing
    # Requests in flight (running + queued) above which the server answers 503 with Retry-After. None: from the
    # engine's --max-num-seqs plus --max-waiting-requests.
    max_inflight_requests: int | None = None
    limit_mm_per_prompt: dict[str, int] = field(default_factory=lambda: {"image": 300, "video": 1, "document": 1})
    allowed_local_media_path: Path | None = None
    allowed_media_domains: tuple[str, ...] = ()
    # Media safety limits (docs/INPUTS.md); MediaPolicy holds the rest of the media defaults.
    media_fetch_timeout: float = 20.0  # seconds for one media URL, redirects included
    max_media_bytes: int = 128 << 20  # one image / video / document
    max_image_pixels: int = 89_478_485  # width x height of one image or video frame (Pillow's bomb threshold)
    max_document_pages: int = 100
    max_stored_responses: int = 1000  # /v1/responses kept in memory for previous_response_id (LRU); 0: none
    # Where POST /debug/cuda-memory-snapshot writes the allocator's snapshots (glmv/server/debug.py); None: no
    # allocation stacks are recorded and the route does not exist.
    cuda_memory_history: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"--port must be in 0..65535, got {self.port}.")
        if self.max_request_bytes < 1024:
            raise ValueError(f"--max-request-bytes must be at least 1024, got {self.max_request_bytes}.")
        if self.max_stored_responses < 0:
            raise ValueError(f"--max-stored-responses must be 0 or more, got {self.max_stored_responses}.")
        if self.max_inflight_requests is not None and self.max_inflight_requests < 1:
            raise ValueError(f"the in-flight request limit must be at least 1, got {self.max_inflight_requests}.")
        for key in self.limit_mm_per_prompt:
            if key not in ("image", "video", "document"):
                raise ValueError(f"--limit-mm-per-prompt: unknown modality {key!r} (image, video, document).")
        self.media_policy  # noqa: B018 - validates the media settings at startup (ValueError)

    @cached_property
    def media_policy(self) -> MediaPolicy:
        return MediaPolicy(
            allowed_local_media_path=self.allowed_local_media_path,
            allowed_media_domains=self.allowed_media_domains,
            max_images=self.limit_mm_per_prompt.get("image", 300),
            max_videos=self.limit_mm_per_prompt.get("video", 1),
            max_documents=self.limit_mm_per_prompt.get("document", 1),
            fetch_timeout_s=self.media_fetch_timeout,
            max_media_bytes=self.max_media_bytes,
            max_image_pixels=self.max_image_pixels,
            max_document_pages=self.max_document_pages,
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
    metrics: ServerMetrics | None = None  # built in __post_init__ around the engine's stats
    inflight: int = 0  # generation requests admitted and not yet finished

    def __post_init__(self) -> None:
        self.tool_format  # noqa: B018 - decided once, at load, from the chat template itself
        if self.metrics is None:
            replicas = self.engine.replica_stats if isinstance(self.engine, ReplicatedEngine) else None
            self.metrics = ServerMetrics(self.engine.stats, lambda: self.inflight, replicas, self.cache_usage)

    def cache_usage(self, engine_stats: dict[str, float]) -> list[CacheUsage]:
        """Every bounded cache of this server: the prompt builder's two, and the engine's vision caches (embeddings,
        the tower's per-grid tables, its recorded CUDA graphs) when the engine reports them (glmv's own engine)."""
        usage = [self.builder.media_cache.usage("media"), self.builder.patch_cache.usage("mm_processor")]
        for name, stat in (("vision_embedding", "vision_cache"), ("vision_grid_tables", "vision_grid_table"),
                           ("vision_graphs", "vision_graph")):
            if f"{stat}_bytes" in engine_stats:
                usage.append(CacheUsage(name, int(engine_stats[f"{stat}_bytes"]), int(engine_stats[f"{stat}_entries"]),
                                        int(engine_stats.get(f"{stat}_capacity_bytes", 0)),
                                        int(engine_stats.get(f"{stat}_capacity_entries", 0))))
        return usage

    @cached_property
    def tool_format(self) -> ToolFormat | None:
        """The call format the chat template teaches (None: it renders no tools, so no `tool_choice: "auto"`)."""
        return detect_tool_format(self.builder.chat_template_text)

    @property
    def tokenizer(self):
        return self.builder.tokenizer

    @cached_property
    def think_end_ids(self) -> list[int]:
        return list(self.tokenizer.encode("</think>", add_special_tokens=False))

    @cached_property
    def grammar_compiler(self) -> GrammarCompiler:
        """Structured outputs' compiler for this tokenizer (built at the first structured request)."""
        return GrammarCompiler(self.tokenizer, self.model_config.text.vocab_size, self.model_config.eos_token_ids)

    @cached_property
    def response_store(self) -> ResponseStore:
        """Stored /v1/responses (previous_response_id), bounded by --max-stored-responses."""
        return ResponseStore(self.server_config.max_stored_responses)

    @cached_property
    def think_start_ids(self) -> list[int]:
        return list(self.tokenizer.encode("<think>", add_special_tokens=False))

    @property
    def max_inflight(self) -> int:
        if self.server_config.max_inflight_requests is not None:
            return self.server_config.max_inflight_requests
        per_replica = self.engine_config.max_num_seqs + self.engine_config.max_waiting_requests
        return per_replica * self.engine_config.data_parallel_size

    @property
    def default_name(self) -> str:
        return self.model_names[0]

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len
