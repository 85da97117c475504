"""Continual learning: a registry of each bot's versions, and learning rounds that turn new
conversations into a new version without forgetting the old ones (replay, an optional
anchor penalty, a forgetting gate), promoted or rolled back with an atomic pointer."""
