"""di-router: an OpenAI-compatible LLM router with classification and prefix-aware routing."""

__version__ = "0.1.0"
