"""A tiny random-weight reasoning model that vLLM's CPU build serves, built offline in seconds for
the engine tests (`tiny_reasoner()`).

No reasoning model ships in a package, so this one is made like DeepSeek-R1's distills and Qwen3:
  * tokenizer   the embedded SmolLM2's BPE tokenizer (ChatML) plus `<think>` and `</think>` as added
                tokens that are not "special" (as in DeepSeek-R1 and Qwen3: detokenized text keeps
                them, which vLLM's reasoning parsers need)
  * template    Qwen3-style: earlier assistant turns drop their thinking unless they follow the last
                user message (then `<think>\\n{reasoning}\\n</think>\\n\\n` is rendered); the generation
                prompt opens the thinking (`<think>\\n`, as DeepSeek-R1's and Qwen3-Thinking's
                templates do) unless `enable_thinking=false`, which writes an empty
                `<think>\\n\\n</think>\\n\\n` instead; `reasoning_effort` is written into the system
                turn when given (gpt-oss style), so that the prompt shows it reached the template
  * weights     a 2-layer Llama (hidden 128, 2 heads of 64) with random weights

Random weights never write `</think>` of their own (checked by the tests), so with the thinking
opened in the prompt every generated token is thinking, deterministically, until vLLM's
`thinking_token_budget` forces `</think>`: then the answer comes. `pipeline`'s own choice of parser
for such a folder (a `</think>` token, a template that writes `<think>` and takes enable_thinking) is qwen3.
"""

from __future__ import annotations

import os
import pathlib

from model_cache import built_once
from vlm_model import DEFAULT_TOKENIZER_SOURCE

CHAT_TEMPLATE = (
    "{% set ns = namespace(last_query=-1) %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{% set ns.last_query = loop.index0 %}"
    "{% endif %}{% endfor %}"
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "{% if reasoning_effort is defined and reasoning_effort %} Reasoning: {{ reasoning_effort }}.{% endif %}"
    "<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|im_start|>assistant\n"
    "{% if loop.index0 > ns.last_query and message.get('reasoning_content') %}"
    "<think>\n{{ message['reasoning_content'] }}\n</think>\n\n{% endif %}"
    "{{ message['content'] or '' }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)


def tiny_reasoner(cache: str | os.PathLike | None = None) -> str:
    """The tiny reasoning model's folder, built once per content of this file (cached under
    ~/.cache/pipeline/test-models, or `cache`)."""
    return built_once("tiny-reasoner", __file__, build_tiny_reasoner, cache)


def build_tiny_reasoner(folder, tokenizer_source: str | os.PathLike | None = None, seed: int = 0) -> str:
    """Write the tiny reasoning model (random weights, SmolLM2's tokenizer with thinking tokens and
    the template above) into `folder`; return its path."""
    import torch
    from tokenizers import AddedToken
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_source or DEFAULT_TOKENIZER_SOURCE))
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                    AddedToken("</think>", special=False, normalized=False)])
    tok.chat_template = CHAT_TEMPLATE
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    config = LlamaConfig(vocab_size=((len(tok) + 63) // 64) * 64, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=64,
                         max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=tok.bos_token_id,
                         eos_token_id=eos, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = tok.bos_token_id, eos, tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
