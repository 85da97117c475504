"""Serving: the OpenAI-compatible HTTP API, the web chat page, and the conversation store."""
