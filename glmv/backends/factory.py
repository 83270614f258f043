"""build_engine: picks and constructs the engine named by EngineConfig.engine."""

from __future__ import annotations

from typing import Any

from glmv.config import EngineConfig, ModelConfig
from glmv.engine.client import EngineClient


def build_engine(model_config: ModelConfig, engine_config: EngineConfig, tokenizer: Any) -> EngineClient:
    if engine_config.engine == "transformers":
        from glmv.engine.reference import TransformersEngine

        return TransformersEngine(model_config, engine_config, tokenizer)
    if engine_config.engine == "glmv" and engine_config.data_parallel_size > 1:
        from glmv.backends.replicas.engine import build_data_parallel_engine

        return build_data_parallel_engine(model_config, engine_config)
    if engine_config.engine == "glmv":
        from glmv.engine.async_engine import AsyncEngine

        return AsyncEngine(model_config, engine_config, tokenizer)
    if engine_config.engine == "vllm":
        from glmv.backends.vllm import VllmEngine  # type: ignore[import-not-found]

        return VllmEngine(model_config, engine_config, tokenizer)
    raise ValueError(f"Unknown engine {engine_config.engine!r}.")
