"""Developer tools: things tests, demos and the `lorabake dev …` commands need, never the bot's hot path."""

from engine.devtools.tiny_models import TinyModelPaths, write_tiny_models, write_tiny_tagger

__all__ = ["TinyModelPaths", "write_tiny_models", "write_tiny_tagger"]
