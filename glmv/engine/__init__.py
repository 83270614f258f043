"""The engine: Prompt + SamplingParams in, token stream out. Knows nothing of HTTP or OpenAI schemas."""
