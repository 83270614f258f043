"""glmv: serve and use GLM-4.1V-Thinking with an engine of its own."""

__version__ = "0.1.0"

__all__ = ["__version__"]
