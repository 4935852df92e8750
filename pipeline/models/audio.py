"""Does a model hear? Read from its config.json, without loading weights or vLLM (as vision.py
answers for images): speech models (Whisper, Voxtral, Granite Speech) and audio-language chat
models (Qwen2-Audio, Ultravox, Phi-4-multimodal, Gemma 3n) carry an audio encoder's config.
And how long a clip is once vLLM hands it to the model's processor (`samples`)."""

from __future__ import annotations

from pipeline.models.names import config_has_any

# config.json keys that only a model with an audio encoder has (Whisper: num_mel_bins).
AUDIO_KEYS = ("audio_config", "audio_token_index", "audio_token_id", "num_mel_bins", "audio_encoder",
              "audio_processor", "speech_config")


def is_audio_model(model: str) -> bool | None:
    """True for a model that takes audio, False for one that does not, None when its config
    cannot be read (then the engine decides)."""
    return config_has_any(model, AUDIO_KEYS)


def samples(data: str, rate: int) -> int:
    """The samples of an input_audio part's audio (base64) at the model's `rate` Hz, as vLLM hands
    them to its processor: decoded whole (soundfile), mixed to mono, resampled from the file's rate
    (vLLM's torchaudio and scipy resamplers both give ceil(frames * rate / file rate) samples)."""
    import base64
    import io

    import soundfile

    with soundfile.SoundFile(io.BytesIO(base64.b64decode(data))) as f:
        frames, file_rate = len(f.read(dtype="float32", always_2d=True)), f.samplerate
    return -(-frames * rate // file_rate)
