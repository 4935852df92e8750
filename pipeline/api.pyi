# Generated from the option table by `python -m pipeline.api > pipeline/api.pyi`; a test keeps it in step.
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypedDict

import polars as pl
from typing_extensions import Unpack

Inputs = Any  # paths, or a polars/pandas DataFrame, pyarrow Table/Dataset, datasets.Dataset, list of dicts

class _run_estimate_validate(TypedDict, total=False):
    storage_option: Mapping[str, Any] | Sequence[str] | None  # default None
    max_line_bytes: int | None  # default 8388608
    max_n: int | None  # default 4
    limit: int | None  # default None
    sample_seed: int | None  # default None
    date: str | None  # default None
    run_id: str | None  # default None
    template_user: str | None  # default None
    template_system: str | None  # default None
    template_turns: str | None  # default None
    sample: Mapping[str, Any] | Sequence[str] | None  # default None
    sample_column: Mapping[str, Any] | Sequence[str] | None  # default None
    response_schema: str | None  # default None
    id_column: str | None  # default None
    template_image: Sequence[str] | None  # default None
    image_max_bytes: int | None  # default 20971520
    image_timeout: float | None  # default 30.0
    image_workers: int | None  # default 8
    image_max_pixels: int | None  # default 50000000
    images_per_request: int | None  # default 500
    image_bytes_per_request: int | None  # default 52428800
    allowed_local_media_path: str | None  # default None
    allowed_media_domains: Sequence[str] | None  # default None
    allow_private_media: bool  # default False
    media_storage: Sequence[str] | None  # default None
    limit_mm_per_prompt: Mapping[str, Any] | Sequence[str] | None  # default None
    carry: Sequence[str] | None  # default None
    carry_all: bool  # default False
    model: str | None  # default None
    served_model_name: Sequence[str] | None  # default None
    route: Mapping[str, Any] | Sequence[str] | None  # default None
    lora: Mapping[str, Any] | Sequence[str] | None  # default None
    max_model_len: int | None  # default None
    tokenizer: str | None  # default None
    trust_remote_code: bool  # default False
    reasoning_parser: str | None  # default None
    reasoning_effort: Literal['none', 'minimal', 'low', 'medium', 'high', 'xhigh', 'max'] | None  # default None
    chat_template_kwargs: Mapping[str, Any] | Sequence[str] | None  # default None
    thinking_token_budget: int | None  # default None
    repair: str | None  # default None
    repair_attempts: int | None  # default 2
    repair_max_tokens: int | None  # default 4096
    schema_preflight: bool | None  # default None
    schema_timeout: float | None  # default 30.0
    runner: Literal['auto', 'generate', 'pooling'] | None  # default 'auto'

class _run_estimate(_run_estimate_validate, total=False):
    provider: str | None  # default None
    price_input: float | None  # default None
    price_output: float | None  # default None
    price_reasoning: float | None  # default None
    output: str | None  # default None
    engine: Literal['vllm', 'fake'] | None  # default 'vllm'
    engine_option: Mapping[str, Any] | Sequence[str] | None  # default None
    order: Literal['auto', 'prefix', 'stream', 'sorted', 'input'] | None  # default 'auto'
    order_buffer: int | None  # default 100000
    order_buffer_bytes: int | None  # default 536870912
    decode_first: bool | None  # default None
    block_size: int | None  # default None

class _run(_run_estimate, _run_estimate_validate, total=False):
    explode_choices: bool  # default False
    format: Literal['parquet', 'openai', 'native', 'anthropic', 'gemini'] | None  # default 'parquet'
    split_errors: bool  # default False
    checkpoint_every: int | None  # default 5000
    checkpoint_seconds: float | None  # default 300.0
    overwrite: bool  # default False
    allow_foreign_files: bool  # default False
    verify_content: bool  # default False
    lease_timeout: float | None  # default 60.0
    metrics_file: str | None  # default None
    job_name: str | None  # default None
    max_bad_rows: str | None  # default None
    check: str | None  # default None
    check_schema: str | None  # default None
    check_regex: str | None  # default None
    quiet: bool  # default False
    dry_run: bool  # default False
    seed_on_cpu: Literal['ignore', 'error', 'engine'] | None  # default 'ignore'
    tool_call_parser: str | None  # default None
    convert: Literal['auto', 'none', 'embed', 'classify'] | None  # default None
    executor: Literal['local', 'ray'] | None  # default 'local'
    ray_address: str | None  # default None
    max_in_flight: int | None  # default None
    max_in_flight_bytes: int | None  # default 268435456
    identical_once: bool | None  # default None
    max_engine_restarts: int | None  # default 50
    data_parallel_size: int | None  # default None
    dtype: str | None  # default None
    enforce_eager: bool | None  # default None
    gpu_memory_utilization: float | None  # default None
    tensor_parallel_size: int | None  # default None
    max_num_seqs: int | None  # default None
    max_num_batched_tokens: int | None  # default None
    enable_prefix_caching: bool | None  # default None
    quantization: str | None  # default None
    kv_cache_dtype: str | None  # default None
    seed: int | None  # default None
    engine_arg: Mapping[str, Any] | Sequence[str] | None  # default None
    response_format: type | dict[str, Any] | None  # default None
    template: str | Callable[[dict[str, Any]], Any] | None  # default None
    parse: Callable[[dict[str, Any]], Any] | None  # default None
    parsed: bool  # default False
    lazy: bool  # default False
    with_report: bool  # default False
    cache: str | os.PathLike | None  # default None

class _validate(_run_estimate_validate, total=False):
    max_errors: int | None  # default 100
    response_format: type | dict[str, Any] | None  # default None
    template: str | Callable[[dict[str, Any]], Any] | None  # default None
    cache: str | os.PathLike | None  # default None

class _estimate(_run_estimate, _run_estimate_validate, total=False):
    completion_ratio: float | None  # default None
    calibrate_from: str | None  # default None
    tokens_per_second: float | None  # default None
    gpu_hour_usd: float | None  # default 2.0
    workers: int | None  # default None
    as_json: bool  # default False
    rows_file: str | None  # default None
    sample_run: int | None  # default None
    sample_run_seed: int | None  # default 0
    deadline: str | None  # default None
    budget: float | None  # default None
    response_format: type | dict[str, Any] | None  # default None
    template: str | Callable[[dict[str, Any]], Any] | None  # default None
    cache: str | os.PathLike | None  # default None

def run(inputs: Inputs, **kwargs: Unpack[_run]) -> pl.DataFrame | pl.LazyFrame | tuple[pl.DataFrame | pl.LazyFrame, dict[str, Any]] | None: ...

def estimate(inputs: Inputs, **kwargs: Unpack[_estimate]) -> dict[str, Any]: ...

def validate(inputs: Inputs, **kwargs: Unpack[_validate]) -> bool: ...

class Session:
    starts: int
    def __init__(self, **engine_options: Unpack[_run]) -> None: ...
    def run(self, inputs: Inputs, **kwargs: Unpack[_run]) -> pl.DataFrame | pl.LazyFrame | tuple[pl.DataFrame | pl.LazyFrame, dict[str, Any]] | None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Session: ...
    def __exit__(self, *exc: object) -> None: ...
