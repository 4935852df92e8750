"""LoRA adapters (`--lora NAME=PATH`): each NAME is one more model name the run serves, on the
same base model and the same engine (vLLM's offline LoRA support).

Read and checked at plan time, before anything is written: the folder, its adapter_config.json,
its rank (which sizes the engine's `max_lora_rank`) and a digest of its files (part of the
resume fingerprint, so a retrained adapter at the same path never resumes the old output).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from pipeline.exits import UserError

# vLLM's LoRAConfig.max_lora_rank accepts these values only (vllm/config/lora.py MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_HINT = ("Hint: NAME=PATH takes a local folder written by peft's save_pretrained (adapter_config.json "
         "and adapter_model.safetensors); download a hub adapter first, e.g. "
         "`huggingface-cli download ORG/ADAPTER --local-dir DIR`")


@dataclass(frozen=True)
class Adapter:
    """One LoRA adapter of the run."""

    name: str  # the model name requests (or --route targets) use for it
    path: str  # its local folder, absolute
    rank: int  # adapter_config.json `r` (the largest of its rank_pattern)
    digest: str  # of adapter_config.json and the weight file: the resume fingerprint's part


def load_adapters(lora: dict[str, Any] | None, base_names: frozenset[str] = frozenset()) -> tuple[Adapter, ...]:
    """The adapters of `--lora NAME=PATH` (or a job file's `lora:` mapping), in the order given.
    Raises ValueError, naming the file and the fix, for a missing folder or config, a name the base
    model already answers to, or a rank vLLM cannot serve."""
    out = []
    for name, path in (lora or {}).items():
        name, path = str(name), "" if path is None else str(path)
        where = f"--lora {name}={path}"
        if not name or not path:
            raise UserError(f"{where}: give NAME=PATH, a name and the adapter's folder. {_HINT}")
        if name in base_names:
            raise UserError(f"{where}: {name} already names the base model; give the adapter another name")
        folder = os.path.abspath(os.path.expanduser(path))
        if not os.path.isdir(folder):
            raise UserError(f"{where}: no such folder {folder}. {_HINT}")
        config_file = os.path.join(folder, "adapter_config.json")
        try:
            with open(config_file, "rb") as f:
                config_bytes = f.read()
            config = json.loads(config_bytes)
        except FileNotFoundError:
            raise UserError(f"{where}: {config_file} is missing, so this is not a LoRA adapter folder. "
                             f"{_HINT}") from None
        except ValueError as e:
            raise UserError(f"{where}: {config_file} is not valid JSON ({e})") from None
        if not isinstance(config, dict) or str(config.get("peft_type", "LORA")).upper() != "LORA":
            raise UserError(f"{where}: {config_file} is not a LoRA adapter's config "
                             f"(peft_type {config.get('peft_type') if isinstance(config, dict) else None!r}); "
                             "only LoRA adapters run on vLLM")
        weights = next((os.path.join(folder, w) for w in WEIGHT_FILES if os.path.isfile(os.path.join(folder, w))), None)
        if weights is None:
            raise UserError(f"{where}: {folder} holds no {' or '.join(WEIGHT_FILES)}. {_HINT}")
        rank = adapter_rank(config)
        if rank > VLLM_LORA_RANKS[-1]:
            raise UserError(f"{where}: rank {rank} ({config_file}) is above vLLM's largest LoRA rank "
                             f"{VLLM_LORA_RANKS[-1]}")
        out.append(Adapter(name, folder, rank, _digest(config_bytes, weights)))
    return tuple(out)


def adapter_rank(config: dict[str, Any]) -> int:
    """The largest rank an adapter uses: `r`, or a bigger one in its per-module `rank_pattern`."""
    ranks = [config.get("r") or 8, *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


def lora_engine_args(adapters: tuple[Adapter, ...]) -> dict[str, Any]:
    """The vLLM engine arguments that serve these adapters from one engine, all in one batch:
    none without adapters."""
    if not adapters:
        return {}
    rank = max(a.rank for a in adapters)
    return {"enable_lora": True, "max_loras": len(adapters),
            "max_lora_rank": next(r for r in VLLM_LORA_RANKS if r >= rank)}


def adapters_fingerprint(adapters: tuple[Adapter, ...]) -> dict[str, str]:
    """What the resume fingerprint holds of the adapters: each name with its files' digest."""
    return {a.name: a.digest for a in adapters}


def _digest(config_bytes: bytes, weights: str) -> str:
    h = hashlib.sha256(config_bytes)
    with open(weights, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:32]
