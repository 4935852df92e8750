"""Batch LLM inference on vLLM's offline engine: OpenAI-format chat requests in, Parquet out.

`from pipeline import run, estimate, validate, Session`: the Python API (api.py, docs/python.md),
imported on first use so that `import pipeline` stays fast (no vLLM, no torch).
"""

from pipeline.version import __version__ as __version__  # the leaf every layer may read

__all__ = ["Session", "estimate", "run", "validate"]


def __getattr__(name: str):
    if name in __all__:
        # imported by name on first use: `import pipeline` stays fast and does not depend on
        # its top layer
        import importlib

        return getattr(importlib.import_module("pipeline.api"), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
