"""Turnout: an OpenAI-compatible LLM gateway that sends each chat request to the right model."""

__version__ = "0.1.0"
