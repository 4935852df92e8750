"""A tiny random-weight Qwen2-Audio (an audio-language chat model) that vLLM's CPU build serves, built
offline in seconds for the chat `input_audio` engine tests (`tiny_qwen2_audio()`); test sounds come
from tests/speech_model.py (`wav`).

Why Qwen2-Audio: vLLM 0.32's qwen2_audio module imports without torchvision (its audio tower is
transformers' Qwen2AudioEncoder, its processor a WhisperFeatureExtractor), and transformers'
Qwen2AudioProcessor needs no hub file.

Folder contents (all written with save_pretrained):
  * config.json        Qwen2AudioConfig: a Whisper-style audio encoder (128 mel bins, 1 layer, d_model 128,
                       2 heads of size 64: the CPU attention kernel rejects head size 16; 1500 positions = 30 s)
                       + a Qwen2 text model (2 layers, hidden 128, 2 heads of size 64)
  * model.safetensors  random bf16 weights (mostly the 49k-token embeddings)
  * tokenizer.json, tokenizer_config.json, chat_template.jinja
                       SmolLM2's BPE tokenizer (ChatML) + Qwen2-Audio's <|audio_bos|>, <|AUDIO|>, <|audio_eos|>
  * preprocessor_config.json, processor_config.json   Qwen2AudioProcessor (WhisperFeatureExtractor, 128 mel
                       bins, 16 kHz, hop 160, 30-second chunks) and its own chat template

Audio tokens (what the processor puts in place of each audio part; checked against vLLM): the template
writes "Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>\\n" per part, and the one <|AUDIO|> becomes
((F - 1) // 2 + 1 - 2) // 2 + 1 tokens for F mel frames (16 kHz samples / 160, at most 3000: a clip is
cut at 30 s), so 1 s of audio is 25 tokens and 30 s or more is 750.
"""
from __future__ import annotations

import os
import pathlib

from model_cache import built_once
from vlm_model import DEFAULT_TOKENIZER_SOURCE

AUDIO_TOKENS = ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]


def tiny_qwen2_audio(cache: str | os.PathLike | None = None) -> str:
    """The tiny Qwen2-Audio's folder, built once per content: cached under ~/.cache/pipeline/test-models
    (or `cache`), keyed by a digest of this file, so a change to the recipe builds a new one."""
    return built_once("tiny-qwen2-audio", __file__, build_tiny_qwen2_audio, cache)


def build_tiny_qwen2_audio(folder, tokenizer_source: str | os.PathLike | None = None, seed: int = 0) -> str:
    """Write a tiny Qwen2-Audio model (random weights + real processor) into ``folder``; return its path."""
    import torch
    from transformers import (
        AutoTokenizer,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_source or DEFAULT_TOKENIZER_SOURCE))
    tok.add_tokens(AUDIO_TOKENS, special_tokens=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok)
    tok.chat_template = processor.chat_template  # Qwen2-Audio's template: "Audio N: <|audio_bos|>..." per part
    config = Qwen2AudioConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=256,
                          d_model=128, max_source_positions=1500),
        text_config=dict(model_type="qwen2", vocab_size=((len(tok) + 63) // 64) * 64, hidden_size=128,
                         intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=8192, bos_token_id=tok.bos_token_id, eos_token_id=im_end,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False),
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).to(torch.bfloat16)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = tok.bos_token_id, im_end, tok.pad_token_id
    model.save_pretrained(folder)
    _as_published(folder / "model.safetensors")
    processor.save_pretrained(folder)
    return str(folder)


def _as_published(path: pathlib.Path) -> None:
    """transformers 5 saves the text model's weights as `language_model.model.model.*`; Qwen2-Audio's
    published checkpoints (and vLLM's loader) name them `language_model.model.*`."""
    from safetensors.torch import load_file, save_file

    weights = load_file(path)
    save_file({k.replace("language_model.model.model.", "language_model.model."): v for k, v in weights.items()},
              path, metadata={"format": "pt"})
