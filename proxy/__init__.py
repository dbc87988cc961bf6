"""repro-proxy: reproducible, cached answers from OpenAI-compatible LLM APIs."""

__version__ = "0.1.0"
