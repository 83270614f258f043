"""glmv: serve and use GLM-4.1V-Thinking with an engine of its own."""

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str):
    """Lazy `glmv.LLM` and `glmv.SamplingParams` so `import glmv` stays light (the engine pulls in torch)."""
    if name == "LLM":
        from glmv.llm import LLM

        return LLM
    if name == "SamplingParams":
        from glmv.sampling import SamplingParams

        return SamplingParams
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
