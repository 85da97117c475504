"""Token generation behind one interface (:class:`~chattune.backends.base.Backend`).

The chat engine builds prompts as token ids; a backend turns them into text, streamed for
one conversation or batched for many. ``transformers`` is the only backend today; llama.cpp
(GGUF) and a remote OpenAI-compatible server (vLLM) implement the same protocol next.
"""
