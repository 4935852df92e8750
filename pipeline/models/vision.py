"""Is a model a vision-language model? Read from its config.json, without loading weights or vLLM.

vLLM's registry (`supports_multimodal`) needs `import vllm` (seconds) and knows only the
architectures of the installed build; the config answers the same question in milliseconds: every
vision-language model vLLM serves (Qwen2/2.5-VL, Llama 3.2 Vision (mllama), LLaVA, Idefics3,
SmolVLM, PaliGemma, Phi-3-vision, MiniCPM-V, Gemma 3, Pixtral...) carries a vision tower's config.
"""

from __future__ import annotations

from pipeline.models.names import _json_file, is_embedded, resolve_model

# config.json keys that only a model with an image encoder has.
VISION_KEYS = ("vision_config", "vision_tower", "mm_vision_tower", "visual", "img_processor",
               "vision_encoder", "image_token_index", "image_token_id")
EXAMPLES = "Qwen/Qwen2.5-VL-7B-Instruct, meta-llama/Llama-3.2-11B-Vision-Instruct or HuggingFaceTB/SmolVLM-Instruct"


def is_vision_model(model: str) -> bool | None:
    """True for a vision-language model, False for a text-only one, None when its config cannot
    be read (then the engine decides)."""
    if is_embedded(model):  # SmolLM2: text only (and never prepared just to be asked)
        return False
    try:
        config = _json_file(resolve_model(model), "config.json")
    except Exception:  # noqa: BLE001 - no network, no cache: unknown, not a refusal
        return None
    if config is None:
        return None
    return any(key in config for key in VISION_KEYS)
