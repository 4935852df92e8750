"""Does a model hear? Read from its config.json, without loading weights or vLLM (as vision.py
answers for images): speech models (Whisper, Voxtral, Granite Speech) and audio-language chat
models (Qwen2-Audio, Ultravox, Phi-4-multimodal, Gemma 3n) carry an audio encoder's config."""

from __future__ import annotations

from pipeline.models.names import config_has_any

# config.json keys that only a model with an audio encoder has (Whisper: num_mel_bins).
AUDIO_KEYS = ("audio_config", "audio_token_index", "audio_token_id", "num_mel_bins", "audio_encoder",
              "audio_processor", "speech_config")


def is_audio_model(model: str) -> bool | None:
    """True for a model that takes audio, False for one that does not, None when its config
    cannot be read (then the engine decides)."""
    return config_has_any(model, AUDIO_KEYS)
