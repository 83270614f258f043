"""OpenAI's Responses API (`POST /v1/responses`): items in, items out, on the chat route's road (docs/API.md)."""
