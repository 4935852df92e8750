"""Batch LLM inference on vLLM's offline engine: OpenAI-format chat requests in, Parquet out."""

__version__ = "0.1.0"
