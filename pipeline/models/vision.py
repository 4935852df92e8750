"""Is a model a vision-language model? Read from its config.json, without loading weights or vLLM.

vLLM's registry (`supports_multimodal`) needs `import vllm` (seconds) and knows only the
architectures of the installed build; the config answers the same question in milliseconds: every
vision-language model vLLM serves (Qwen2/2.5-VL, Llama 3.2 Vision (mllama), LLaVA, Idefics3,
SmolVLM, PaliGemma, Phi-3-vision, MiniCPM-V, Gemma 3, Pixtral...) carries a vision tower's config.
"""

from __future__ import annotations

from pipeline.models.names import config_has_any
from pipeline.records import Problem

# config.json keys that only a model with an image encoder has.
VISION_KEYS = ("vision_config", "vision_tower", "mm_vision_tower", "visual", "img_processor",
               "vision_encoder", "image_token_index", "image_token_id")
EXAMPLES = "Qwen/Qwen2.5-VL-7B-Instruct, meta-llama/Llama-3.2-11B-Vision-Instruct or HuggingFaceTB/SmolVLM-Instruct"


def is_vision_model(model: str) -> bool | None:
    """True for a vision-language model, False for a text-only one, None when its config cannot
    be read (then the engine decides)."""
    return config_has_any(model, VISION_KEYS)


def too_many_images(params: list[str], limit: int, *, models_own: bool = False,
                    option: str = "--limit-mm-per-prompt image=N") -> Problem:
    """A request over the images-per-request limit, naming the first image over it: intake's
    refusal under `option` (--limit-mm-per-prompt, --images-per-request), and the engine's under
    vLLM's own limit for the model (`models_own`: one that --limit-mm-per-prompt cannot raise,
    e.g. Llama 3.2 Vision's one)."""
    hint = ("the model takes no more: split the request" if models_own else
            f"raise {option} (more images cost engine memory) or split the request")
    return Problem("too_many_images", f"the request has {len(params)} images; at most {limit} are allowed per "
                   f"request. Hint: {hint}", params[limit] if len(params) > limit else None)
