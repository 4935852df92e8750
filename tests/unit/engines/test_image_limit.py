"""vLLM's own images-per-prompt limit (a model's, e.g. Llama 3.2 Vision's one image) refuses a
request in the engine: the row says too_many_images and names the first image over it, as
intake does under --limit-mm-per-prompt (vLLM's message as vllm/multimodal/processing/context.py
words it; no engine)."""

import pytest
from conftest import source

from pipeline.intake.requests import Context, parse_row

vllm_engine = pytest.importorskip("pipeline.engines.vllm")


def request(images):
    parts = [{"type": "text", "text": "Compare:"}] + [{"type": "image_url", "image_url": {"url": f"/i/{k}.png"}}
                                                      for k in range(images)]
    return parse_row({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]},
                     source=source("f"), line=1, ctx=Context())


@pytest.mark.parametrize("vllm_says, hint", [
    ("At most 1 image(s) may be provided in one prompt.", "the model takes no more: split the request"),
    ("At most 1 image(s) may be provided in one prompt. Set `--limit-mm-per-prompt` to increase this limit.",
     "raise --limit-mm-per-prompt image=N"),
])
def test_vllms_image_limit_is_too_many_images_naming_the_part(vllm_says, hint):
    engine = object.__new__(vllm_engine.VLLMEngine)
    problem = engine._refusal(ValueError(vllm_says), req=request(3))
    assert (problem.code, problem.param) == ("too_many_images", "messages[1].content[2].image_url")
    assert problem.message.startswith("the request has 3 images; at most 1 are allowed per request. Hint: ")
    assert hint in problem.message
    other = engine._refusal(ValueError("something else entirely"), req=request(3))
    assert (other.code, other.param) == ("invalid_request", "messages")
