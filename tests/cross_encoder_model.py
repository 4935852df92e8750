"""A tiny random-weight BERT cross-encoder (`BertForSequenceClassification`, one label) that vLLM's
CPU build serves as a scoring model, built offline in a second (`tiny_cross_encoder(folder)`):
one layer, hidden 64, one head of size 64 (the CPU attention kernel rejects head size 16), and a
WordPiece tokenizer over a small vocabulary (the test texts' words, letters and ##letters), so
that [CLS] query [SEP] document [SEP] is a real pair encoding. Random weights: the scores mean
nothing, but vLLM computes them, and counts their prompts, as for any cross-encoder."""

from __future__ import annotations

import pathlib

WORDS = ("what do cats eat fish and meat the stock market fell today kittens drink milk a is small feline car "
         "dogs bark purr cars drive").split()


def tiny_cross_encoder(folder: pathlib.Path) -> pathlib.Path:
    """The model folder (built once per folder)."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), *letters, *"?.,!'",
             *(f"##{c}" for c in letters)]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=128, max_position_embeddings=128, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
