"""The endpoints, one file each, and the one registry the other rooms look them up in.

To add an endpoint: write `pipeline/endpoints/<name>.py` building one `Endpoint` (base.py says
what each member is; its `parse` makes the normalized body the Request carries), list it in
`ENDPOINTS` below, and give every engine's `SUBMIT` table an entry for it (engines/vllm.py,
engines/fake.py); tests/unit/test_registry.py names what is missing. Engines take the request's
body (`Request.body`) as it is.
"""

from __future__ import annotations

from typing import Any

from pipeline.endpoints.base import RUNNERS, Endpoint, Origin
from pipeline.endpoints.chat import CHAT
from pipeline.endpoints.completions import COMPLETIONS
from pipeline.endpoints.embeddings import EMBEDDINGS
from pipeline.endpoints.rerank import RERANK
from pipeline.endpoints.score import SCORE
from pipeline.endpoints.transcriptions import TRANSCRIPTIONS
from pipeline.endpoints.translations import TRANSLATIONS
from pipeline.records import Request

# Every endpoint, by the name a request carries (Request.endpoint).
ENDPOINTS: dict[str, Endpoint] = {e.name: e for e in (CHAT, EMBEDDINGS, COMPLETIONS, SCORE, RERANK,
                                                        TRANSCRIPTIONS, TRANSLATIONS)}
# The endpoint of a body that names none: a bare body, a provider's converted line, a template row.
DEFAULT = CHAT

__all__ = ["DEFAULT", "ENDPOINTS", "RUNNERS", "Endpoint", "Origin", "answering", "of",
           "runner_endpoints"]


def of(request: Request) -> Endpoint:
    """The endpoint a request asks for."""
    return ENDPOINTS[request.endpoint]


def answering(row: dict[str, Any]) -> Endpoint:
    """The endpoint an output row answers: the first other than the default that claims it."""
    return next((e for e in ENDPOINTS.values() if e is not DEFAULT and e.answers(row)), DEFAULT)


def runner_endpoints(runner: str) -> str:
    """The endpoints a kind of model serves, for messages: "chat, completions"."""
    return ", ".join(e.name for e in ENDPOINTS.values() if e.runner == runner)
