"""Model facts: the names a model answers to, where its files are, and its context length.

Cheap to import: no torch, no transformers. The embedded model's preparation is in embedded.py.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pipeline.exits import UserError
from pipeline.models.embedded import EMBEDDED

_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
# RoPE types whose max_position_embeddings already includes the scaling (_get_and_verify_max_len).
_PRESCALED_ROPE = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")
_VLLM_DEFAULT_LEN = 2048  # what vLLM assumes when config.json names no length


def is_embedded(name: str) -> bool:
    return name in EMBEDDED or name in EMBEDDED.values()


def canonical_name(name: str) -> str:
    """The name output rows and price lookups use: the embedded alias becomes its full name."""
    return EMBEDDED.get(name, name)


def output_name(model: str, served: tuple[str, ...] | list[str] = ()) -> str:
    """The model's name in output rows: the first served name, else the canonical name."""
    return served[0] if served else canonical_name(model)


def served_names(model: str, served: tuple[str, ...] | list[str] = ()) -> frozenset[str]:
    """Every name a request may use for this model: how `-m` spelled it, its canonical name and
    aliases (smollm2 = HuggingFaceTB/SmolLM2-135M-Instruct), and each --served-model-name. The one
    answer `run`, `validate` and `estimate` share."""
    canonical = canonical_name(model)
    aliases = {alias for alias, name in EMBEDDED.items() if name == canonical}
    return frozenset({model, canonical, *aliases, *served})


def resolve_model(name: str) -> str:
    """The embedded model (or its alias) -> path of its prepared local folder, preparing it
    if missing; anything else (a local folder, a hub id) is returned unchanged."""
    if not is_embedded(name):
        return name
    from pipeline.models.embedded import embedded_model_dir, is_ready, prepare_embedded_model

    folder = embedded_model_dir()
    if not is_ready(folder):
        folder = prepare_embedded_model()
    return str(folder)


def check_model(name: str) -> None:
    """Refuse, before anything runs or is written, a model name that can name nothing: neither
    the embedded model or its alias, a local path, a URL, a model in the Hugging Face cache, nor
    (online) a repository the hub knows. The message names the value and the closest known name.
    A hub that cannot be reached leaves the question to the engine."""
    if is_embedded(name) or "://" in name or os.path.exists(os.path.expanduser(name)):
        return
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except ValueError:  # not even a repository id's shape (`a/b/c`, spaces)
        pass
    else:
        if not constants.HF_HUB_OFFLINE and _hub_has(name) is not False:
            return
    where = "the Hugging Face cache" + (" (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else " or on the hub")
    raise UserError(f"--model {name!r} is neither a model alias ({', '.join(sorted(EMBEDDED))}), a local folder nor "
                    f"a model in {where}. Did you mean {_closest(name, constants.HF_HUB_CACHE)!r}? "
                    "Hint: check the spelling, give a local folder, or download the model first")


def _hub_has(name: str) -> bool | None:
    """Whether the hub has this model repository (gated ones count); None when it cannot say."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        HfApi().model_info(name, timeout=10)
        return True
    except GatedRepoError:
        return True
    except RepositoryNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - no network, a proxy, a hub outage: the engine decides
        return None


def _closest(name: str, cache: str) -> str:
    """The known model name most like `name`: the aliases, the embedded model, cached models."""
    import difflib

    cached = [d[len("models--"):].replace("--", "/") for d in (os.listdir(cache) if os.path.isdir(cache) else [])
              if d.startswith("models--")]
    known = {k.lower(): k for k in [*sorted(EMBEDDED), *EMBEDDED.values(), *cached]}
    found = difflib.get_close_matches(name.lower(), list(known), n=1, cutoff=0.0)
    return known[found[0]] if found else next(iter(known.values()))


def context_length(path: str, max_model_len: int | None = None) -> int:
    """The context length vLLM uses for a model (vllm/config/model.py `_get_and_verify_max_len`):
    `max_model_len` when given (refused above the model's own, as vLLM does), else the smallest
    length key of config.json, capped by tokenizer_config.json's model_max_length and scaled by
    the RoPE factor."""
    config = _json_file(path, "config.json") or {}
    text = config.get("text_config") or config
    derived = min((text[k] for k in _LENGTH_KEYS if text.get(k) is not None), default=float("inf"))
    if text.get("model_max_length"):
        derived = text["model_max_length"]
    derived = min(derived, (_json_file(path, "tokenizer_config.json") or {}).get("model_max_length", derived))
    if derived == float("inf"):
        if max_model_len is not None:
            return max_model_len
        derived = _VLLM_DEFAULT_LEN
    ropes = _rope_parameters(config)
    if ropes and "gemma3" not in str(config.get("model_type")):
        factor = 1.0
        for rp in ropes:
            if rp.get("rope_type", rp.get("type")) not in _PRESCALED_ROPE:
                factor = rp.get("factor", factor)
        derived *= factor or 1.0
    if max_model_len is None:
        if any(rp.get("rope_type", rp.get("type")) == "longrope" for rp in ropes):
            return int(config.get("original_max_position_embeddings", derived))
        return int(derived)
    allowed = config.get("model_max_length")
    if max_model_len > derived and not (allowed and max_model_len <= allowed) \
            and os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0").lower() not in ("1", "true"):
        raise UserError(f"--max-model-len {max_model_len} is greater than the model's context ({int(derived)}); "
                         "vLLM refuses it (unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)")
    return max_model_len


def _rope_parameters(config: dict[str, Any]) -> list[dict[str, Any]]:
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    if not isinstance(rope, dict):
        return []
    if rope and all(isinstance(v, dict) for v in rope.values()):  # one dict per layer type
        return [v for v in rope.values() if v]
    return [rope]


def config_has_any(model: str, keys: tuple[str, ...]) -> bool | None:
    """Whether the model's config.json holds any of `keys` (the config of an encoder of a kind:
    models/vision.py, models/audio.py); False for the embedded SmolLM2 (text only, and never
    prepared just to be asked), None when the config cannot be read (then the engine decides)."""
    if is_embedded(model):
        return False
    try:
        config = _json_file(resolve_model(model), "config.json")
    except Exception:  # noqa: BLE001 - no network, no cache: unknown, not a refusal
        return None
    if config is None:
        return None
    return any(key in config for key in keys)


def _json_file(path: str, name: str) -> dict[str, Any] | None:
    """A model's JSON file from its folder or the Hugging Face cache; None if it has none."""
    from transformers.utils import cached_file

    found = cached_file(path, name, _raise_exceptions_for_missing_entries=False)
    if found is None:
        return None
    with open(found) as f:
        return json.load(f)


# ---- worker processes -------------------------------------------------------------------------
# Forked workers inherit the loaded tokenizer (start in milliseconds); spawn where fork is unsafe.


# Encoder families whose sequence classifiers vLLM serves natively: it joins a score pair with the
# tokenizer's pair encoding. A decoder LLM's sequence classifier (an LLM as reranker, vLLM's
# as_seq_cls_model) joins the two texts end to end unless its config says use_sep_token.
_ENCODERS = ("bert", "roberta", "xlm-roberta", "modernbert", "deberta", "deberta-v2", "electra", "distilbert",
             "nomic_bert", "new", "gte")


def score_join(path: str) -> str | None:
    """How vLLM makes one prompt of a (query, document) pair when this model is a cross-encoder
    (an architecture `*ForSequenceClassification`: vLLM's pooling task classify), as its scoring
    does without a score template (vllm/entrypoints/pooling/scoring/io_processor.py): "pair", the
    tokenizer's pair encoding ([CLS] query [SEP] document [SEP]; `use_sep_token`), or "concat",
    the query and the document as one text. None: not a cross-encoder (an embedding model embeds
    each text alone)."""
    config = _json_file(path, "config.json") or {}
    if not any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or ()):
        return None
    text = config.get("text_config") or config
    sep = text.get("use_sep_token", config.get("use_sep_token"))
    if sep is None:
        sep = str(text.get("model_type", config.get("model_type"))) in _ENCODERS
    return "pair" if sep else "concat"
