"""Base models (embedded default, Hugging Face folder, GGUF file), adapters, saving."""
