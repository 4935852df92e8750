"""A tiny random-weight Whisper model that vLLM's CPU build serves, built offline in seconds for the
audio engine tests (`tiny_whisper()`), and small test sounds (`wav`, `data_url`).

The hub cannot be reached, so the tokenizer is made here: a real `WhisperTokenizer` (byte-level BPE)
over SmolLM2's vocabulary and merges (the embedded model's, as tests/vlm_model.py uses), plus
Whisper's special tokens: <|startoftranscript|>, one <|xx|> per language vLLM's Whisper accepts,
<|translate|>, <|transcribe|>, <|startoflm|>, <|startofprev|>, <|nospeech|>, <|notimestamps|>, and
the timestamps <|0.00|> .. <|30.00|>. The processor is a real `WhisperProcessor`
(`WhisperFeatureExtractor`: 80 mel bins, 16 kHz, hop 160, 30-second chunks).

Folder contents (all written with save_pretrained):
  * config.json        WhisperConfig: d_model 128, 2 heads of size 64 (the CPU attention kernel rejects
                       head size 16), 1 encoder and 1 decoder layer, 1500 source positions (30 s)
  * model.safetensors  random bf16 weights (mostly the ~51k-token embeddings)
  * tokenizer files, preprocessor_config.json, generation_config.json
"""
from __future__ import annotations

import base64
import io
import os
import pathlib

from model_cache import built_once
from vlm_model import DEFAULT_TOKENIZER_SOURCE

# vLLM 0.32's Whisper languages (vllm/model_executor/models/whisper_utils.py: ISO639_1_SUPPORTED_LANGS).
LANGUAGES = (
    "af ar hy az be bs bg ca zh hr cs da nl en et fi fr gl de el he hi hu is id it ja kn kk ko lv lt mk "
    "ms mr mi ne no fa pl pt ro ru sr sk sl es sw sv tl ta th tr uk ur vi cy"
).split()


def whisper_special_tokens() -> list[str]:
    return (
        ["<|startoftranscript|>"]
        + [f"<|{code}|>" for code in LANGUAGES]
        + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
           "<|notimestamps|>"]
        + [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    )


def tiny_whisper(cache: str | os.PathLike | None = None) -> str:
    """The tiny Whisper's folder, built once per content: cached under ~/.cache/pipeline/test-models
    (or `cache`), keyed by a digest of this file, so a change to the recipe builds a new one."""
    return built_once("tiny-whisper", __file__, build_tiny_whisper, cache)


def wav(seconds: float, rate: int = 16000, freq: float = 440.0) -> bytes:
    """A mono 16-bit PCM WAV of a sine tone, `seconds` long (standard library only)."""
    import math
    import struct
    import wave

    frames = int(round(seconds * rate))
    samples = struct.pack(
        f"<{frames}h", *(int(12000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(frames))
    )
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "audio/wav") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _tokenizer(tokenizer_source):
    import json

    from transformers import WhisperTokenizer

    spec = json.loads((pathlib.Path(tokenizer_source) / "tokenizer.json").read_text())
    vocab = {k: v for k, v in spec["model"]["vocab"].items()}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    tok = WhisperTokenizer(vocab=vocab, merges=merges)
    tok.add_tokens(whisper_special_tokens(), special_tokens=True)
    return tok


def build_tiny_whisper(folder, tokenizer_source: str | os.PathLike | None = None, seed: int = 0) -> str:
    """Write a tiny Whisper model (random weights + real processor) into ``folder``; return its path."""
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(tokenizer_source or DEFAULT_TOKENIZER_SOURCE)
    vocab_size = ((len(tok) + 63) // 64) * 64
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok)
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=80,
        d_model=128,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        max_source_positions=1500,
        max_target_positions=448,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).to(torch.bfloat16)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id, gc.decoder_start_token_id = eot, eot, eot, sot
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)
