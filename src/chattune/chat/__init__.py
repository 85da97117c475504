"""Chatting with a model: generation now; the full chat engine (profiles, history budget,
streaming, retrieval) grows here."""
