"""The providers' batch formats, one file each, and the one registry everything about them is
derived from: the `--format` choices, shape detection, `--format native`, reading result lines
back and the refusals.

To add a provider: write `pipeline/providers/<name>.py` building one `Provider` (common.py says
what each member is) and list it in `PROVIDERS` below; tests/unit/test_registry.py names what is
missing.
"""

from __future__ import annotations

from typing import Any

from pipeline.providers.anthropic import ANTHROPIC
from pipeline.providers.common import Provider
from pipeline.providers.gemini import GEMINI
from pipeline.providers.openai import OPENAI
from pipeline.providers.responses import RESPONSES

# Every provider, by name; OpenAI's format is the default (and asked last when lines are read back).
PROVIDERS: dict[str, Provider] = {p.name: p for p in (OPENAI, ANTHROPIC, GEMINI, RESPONSES)}
DEFAULT = OPENAI

__all__ = ["DEFAULT", "PROVIDERS", "Provider", "reading"]


def reading(line: dict[str, Any]) -> Provider:
    """The provider whose format an output line is in: the first other than the default that owns it."""
    return next((p for p in PROVIDERS.values() if p is not DEFAULT and p.owns(line)), DEFAULT)
