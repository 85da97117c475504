"""Token generation behind one interface (:class:`~chattune.backends.base.Backend`).

The chat engine builds prompts as token ids; a backend turns them into text, streamed for
one conversation or batched for many: ``transformers`` (PyTorch, in process), ``llama.cpp``
(GGUF files in a worker process: KV cache kept across turns, conversations batched) and
``openai`` (any OpenAI-compatible server). :mod:`chattune.backends.registry` picks one.
"""
