"""Turns OpenAI-style messages into a Prompt: media fetching, decoding, chat template, processor."""
