"""Every option of `run`, `validate` and `estimate`, declared once.

The table generates each command's Click options, the commands' configuration (`job.RunConfig`),
the vLLM engine arguments (`engine=True`), the options that change what output rows say and so
are part of the resume fingerprint (`output=True`), and the keys a job file may hold: one job
file drives all three commands, each taking the keys it knows. Adding a vLLM flag is one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from pipeline.engines.base import KINDS
from pipeline.output.formats import FORMATS

RUN, VALIDATE, ESTIMATE, STATUS, REPORT = "run", "validate", "estimate", "status", "report"
READERS = frozenset({RUN, VALIDATE, ESTIMATE})  # commands that read requests
STORAGE = READERS | {STATUS, REPORT}  # commands that touch storage
ONLY_RUN = frozenset({RUN})
MODEL_CMDS = READERS


@dataclass(frozen=True)
class Opt:
    name: str  # the Python name; the flag is --name-with-dashes unless `flag` says otherwise
    help: str | dict[str, str]  # one text, or one per command
    type: Any = None
    default: Any = None
    commands: frozenset[str] = ONLY_RUN
    short: str | None = None
    flag: str | None = None
    is_flag: bool = False  # --x (False unless given)
    pair: bool = False  # --x/--no-x (None unless given: the engine's default)
    multiple: bool = False
    metavar: str | None = None
    engine: bool = False  # a vLLM EngineArgs field of the same name
    output: bool = False  # changes what rows say: a resume with another value is refused
    required_in: frozenset[str] = frozenset()
    hidden: bool = False

    @property
    def long(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def click_option(self, command: str):
        help_text = self.help if isinstance(self.help, str) else self.help[command]
        if self.pair:
            return click.option(f"{self.long}/--no-{self.long[2:]}", self.name, default=None,
                                help=help_text, hidden=self.hidden)
        decls = [self.long] + ([self.short] if self.short else [])
        if self.is_flag:
            return click.option(*decls, self.name, is_flag=True, default=False, help=help_text,
                                hidden=self.hidden)
        return click.option(*decls, self.name, type=self.type, default=self.default,
                            multiple=self.multiple, metavar=self.metavar, help=help_text,
                            show_default=self.default is not None and not self.multiple,
                            required=command in self.required_in, hidden=self.hidden)


Int1 = click.IntRange(min=1)
Int0 = click.IntRange(min=0)
Price = click.FloatRange(min=0)

OPTIONS: tuple[Opt, ...] = (
    # ---- reading requests (every command) ----------------------------------------------------
    Opt("storage_option", "fsspec storage option for every URL (e.g. endpoint_url=..., anon=true). "
        "Values stay strings unless clearly JSON. Repeatable.", multiple=True, metavar="KEY=VALUE",
        commands=STORAGE),
    Opt("max_line_bytes", "Longest accepted input line; longer lines become error rows.", Int1,
        8 * 1024 * 1024, commands=READERS, output=True),
    Opt("max_n", "Largest accepted `n` (choices per request).", click.IntRange(1, 128), 4,
        commands=READERS, output=True),
    Opt("limit", "A trial run: take only the first N rows of the input (with --sample-seed: a seeded "
        "random sample of N rows). Part of the job's fingerprint: a full run into the same output is "
        "a different job.", Int1, metavar="N", commands=READERS, output=True),
    Opt("sample_seed", "With --limit N: take a random sample of N rows chosen by this seed (the same "
        "rows every time) instead of the first N.", int, metavar="S", commands=READERS, output=True),
    Opt("date", "The run's date for {date} and {yesterday} in paths (YYYY-MM-DD; default: today). "
        "For backfills.", commands=READERS),
    Opt("run_id", "The value of {run_id} in paths (default: the date and time of the run).",
        commands=READERS),
    # ---- template jobs: requests made from table rows (every command; see templates.py) ------
    Opt("template_user", "Make each row's request from this Jinja2 template over the row's columns "
        "(a file, or the template text): the user message. Inputs are then tables (Parquet, CSV, "
        "JSON lines) of any columns.", metavar="FILE_OR_TEXT", commands=READERS, output=True),
    Opt("template_system", "A system message template, like --template-user.", metavar="FILE_OR_TEXT",
        commands=READERS, output=True),
    Opt("template_turns", "Earlier turns, between the system and the user message: a template "
        "that renders a JSON or YAML list of {role, content} messages (few-shot examples, a "
        "conversation from the row).", metavar="FILE_OR_TEXT", commands=READERS, output=True),
    Opt("sample", "A request field set for every row (max_tokens, temperature, n, stop, seed...). "
        "Repeatable.", multiple=True, metavar="KEY=VALUE", commands=READERS, output=True),
    Opt("sample_column", "A request field taken from a column of the row (null: not set). Repeatable.",
        multiple=True, metavar="KEY=COLUMN", commands=READERS, output=True),
    Opt("response_schema", "JSON schema file (JSON or YAML; a bare schema or OpenAI's json_schema "
        "object): the requests' response_format, and typed output columns parsed from the "
        "completion, with parse_error.", metavar="FILE", commands=READERS, output=True),
    Opt("id_column", "The column whose value is each row's custom_id (default: from file and row).",
        metavar="NAME", commands=READERS, output=True),
    Opt("template_image", "A column whose value is an image for the user message (bytes, a path or "
        "URL, or a datasets Image {bytes, path}): an image part after the user text. Repeatable, in order; "
        "a null value adds no image.", multiple=True, metavar="COLUMN", commands=READERS, output=True),
    # ---- images (every command; see intake/images.py) -------------------------------------------
    Opt("image_max_bytes", "Largest accepted image (inline or fetched); larger ones make error rows.", Int1,
        20 * 1024 * 1024, commands=READERS, output=True),
    Opt("image_timeout", "Seconds to fetch one image URL, on every store (http(s), s3, gs, az); then "
        "retried twice.", click.FloatRange(min=0.1), 30.0, commands=READERS),
    Opt("image_workers", "Threads fetching and decoding images ahead of the engine.", Int1, 8, commands=READERS),
    Opt("image_max_pixels", "Largest accepted image in pixels (width x height, read from its header before "
        "decoding); larger ones make error rows.", Int1, 50_000_000, commands=READERS, output=True),
    Opt("images_per_request", "Most images one request may hold (OpenAI's bound); more make an error row.",
        Int1, 500, commands=READERS, output=True),
    Opt("image_bytes_per_request", "Most image bytes one request may hold, all its images together (OpenAI's "
        "bound: 50 MB); more make an error row.", Int1, 50 * 1024 * 1024, commands=READERS, output=True),
    # ---- where media named in requests may come from (every command; see intake/media.py) ------
    Opt("allowed_local_media_path", "A folder whose files requests may name as media (a path or file:// "
        "URL resolving inside it, symlinks followed); without it local files are refused. Also read from "
        "--engine-arg allowed_local_media_path=DIR (vLLM's).", metavar="DIR", commands=READERS),
    Opt("allowed_media_domains", "The only hosts media URLs in requests may name (exact host names); "
        "default: any public host. Repeatable; also read from --engine-arg allowed_media_domains=[...] (vLLM's).",
        multiple=True, metavar="HOST", commands=READERS),
    Opt("allow_private_media", "Let media URLs in requests reach private, loopback and link-local "
        "addresses (refused by default: a request file could reach this machine's network).",
        is_flag=True, commands=READERS),
    Opt("media_storage", "A storage location (s3://bucket/prefix, gs://..., https://host/path) from which "
        "requests may name media, read with the job's --storage-option credentials; media URLs elsewhere "
        "are fetched without them. Repeatable.", multiple=True, metavar="PREFIX", commands=READERS),
    Opt("limit_mm_per_prompt", "Most images per request, as image=N (vLLM's limit_mm_per_prompt); more "
        "make error rows.", multiple=True, metavar="image=N", commands=READERS, engine=True, output=True),
    Opt("carry", "An input column to copy into every output row, with its input type. Repeatable.",
        multiple=True, metavar="COLUMN", commands=READERS, output=True),
    Opt("carry_all", "Copy every input column into the output rows.", is_flag=True, commands=READERS,
        output=True),
    Opt("explode_choices", "With n > 1: one output row per choice (column choice_index) instead of "
        "one row with the list.", is_flag=True, output=True),
    # ---- the model (every command) -------------------------------------------------------------
    Opt("model", {RUN: "Model: a local folder, a hub id, or the embedded `smollm2`.",
                  VALIDATE: "Also check that requests name this model, and (with its tokenizer) fit its context.",
                  ESTIMATE: "Model whose tokenizer and chat template count the prompts (no weights are loaded)."},
        short="-m", commands=MODEL_CMDS, required_in=frozenset({RUN, ESTIMATE}), output=True),
    Opt("served_model_name", "Names requests may use for this model (the first is also the output's "
        "model name). Repeatable.", multiple=True, commands=MODEL_CMDS, output=True),
    Opt("route", "Run requests that name another model on this one: PATTERN=MODEL, PATTERN an "
        "exact name or a glob (gpt-4o*; * for every name), MODEL this run's -m or a served name. "
        "Repeatable; a mapping in a job file. The output keeps the requested name.",
        multiple=True, metavar="PATTERN=MODEL", commands=MODEL_CMDS, output=True),
    Opt("lora", "A LoRA adapter of this model: NAME=PATH, PATH a local folder from peft's "
        "save_pretrained. NAME becomes a model name of this run (requests may name it; --route may "
        "point at it); one engine serves the base model and every adapter. Repeatable; a mapping "
        "in a job file.", multiple=True, metavar="NAME=PATH", commands=MODEL_CMDS, output=True),
    Opt("max_model_len", "Context length (prompt + completion); default: the model's.", Int1,
        commands=MODEL_CMDS, engine=True, output=True),
    Opt("tokenizer", "Tokenizer name or path, if not the model's.", commands=MODEL_CMDS, engine=True,
        output=True),
    Opt("trust_remote_code", "Allow model code from the model repository to run. Off: it never runs.",
        is_flag=True, commands=MODEL_CMDS, engine=True, output=True),
    # ---- reasoning models (every command that reads requests; see docs/reasoning.md) ----------------
    Opt("reasoning_parser", "vLLM reasoning parser that splits each completion's thinking (column "
        "reasoning_content) from its answer, as vLLM's server does with the same flag: any name vLLM "
        "registers (deepseek_r1, qwen3, openai_gptoss, granite, ...). Default: by model (DeepSeek-R1 and "
        "its distills, QwQ: deepseek_r1; Qwen3: qwen3; gpt-oss: openai_gptoss), else none; `none`: no split. "
        "With a parser, response_format and tool grammars apply to the answer only.",
        metavar="NAME", commands=READERS, output=True),
    Opt("reasoning_effort", "Default reasoning_effort of the requests that set none (OpenAI's field, for "
        "models whose chat template takes it, such as gpt-oss; any value but none also sets the template's "
        "enable_thinking).", click.Choice(["none", "minimal", "low", "medium", "high", "xhigh", "max"]),
        commands=READERS, output=True),
    Opt("chat_template_kwargs", "Default chat template arguments of every chat request, such as "
        "enable_thinking=false (a request's own chat_template_kwargs win key by key). Repeatable; a "
        "mapping in a job file.", multiple=True, metavar="KEY=VALUE", commands=READERS, output=True),
    Opt("thinking_token_budget", "Default thinking budget of the requests that set none (vLLM's request "
        "field thinking_token_budget): after this many thinking tokens the end of thinking is forced and "
        "the answer follows, within max_tokens. Needs a reasoning parser.", Int0, metavar="TOKENS",
        commands=READERS, output=True),
    # ---- price (run, estimate) -----------------------------------------------------------------
    Opt("provider", "Row of the price table to use (e.g. deepinfra, together). Default: the model's default row.",
        commands=frozenset({RUN, ESTIMATE}), output=True),
    Opt("price_input", "USD per million prompt tokens (overrides the price table).", Price,
        commands=frozenset({RUN, ESTIMATE}), output=True),
    Opt("price_output", "USD per million completion tokens (overrides the price table).", Price,
        commands=frozenset({RUN, ESTIMATE}), output=True),
    Opt("price_reasoning", "USD per million reasoning (thinking) tokens, where they cost other than "
        "output tokens (default: the price table's reasoning price, else --price-output).", Price,
        commands=frozenset({RUN, ESTIMATE}), output=True),
    # ---- run: output ---------------------------------------------------------------------------
    Opt("output", {RUN: "Output folder (local path or fsspec URL).",
                   ESTIMATE: "With --sample-run: the job's output folder, where the sample's rows are committed "
                             "(a later `pipeline run` of the same job into it does not run them again)."},
        short="-o", required_in=ONLY_RUN, commands=frozenset({RUN, ESTIMATE})),
    Opt("format", "parquet: part files with the output schema; JSON lines in a batch API's result format: "
        "openai (OpenAI Batch), anthropic (Message Batches results), gemini (Gemini/Vertex batch output), "
        "responses (OpenAI Batch lines whose bodies are Responses API responses), or native: each row in the "
        "format of its input line (Anthropic lines get Anthropic results, "
        "Gemini lines Gemini lines, Responses API lines Responses output, the rest OpenAI Batch lines). "
        "A line format also gives each input file its own result file, results/NAME.results.jsonl, "
        "when the job completes.",
        click.Choice(list(FORMATS)), "parquet", short="-f", output=True),
    Opt("split_errors", "With a line format: write each input's failed requests to "
        "results/NAME.errors.jsonl, apart from its results/NAME.results.jsonl (OpenAI Batch's output and "
        "error files). Without it, results/NAME.results.jsonl holds every line.", is_flag=True, output=True),
    Opt("checkpoint_every", "Commit a part file every N finished requests.", Int1, 5000),
    Opt("checkpoint_seconds", "...or every this many seconds, whichever comes first.",
        click.FloatRange(min=0.1), 300.0),
    Opt("overwrite", "Discard an output folder that holds a different job's output (only files "
        "this tool wrote).", is_flag=True),
    Opt("allow_foreign_files", "Write into an output folder that holds files this tool did not "
        "write (they are never touched).", is_flag=True),
    Opt("verify_content", "Identify inputs by a hash of their content too (reads each file once "
        "more), so a same-size rewrite is never resumed as the old file.", is_flag=True),
    Opt("lease_timeout", "Seconds without a heartbeat after which another run may take over the "
        "output of a crashed run on another machine.", click.FloatRange(min=1), 60.0),
    Opt("metrics_file", "Also write the run's counters in Prometheus text format to this file "
        "(node-exporter textfile collector), whatever the exit code."),
    Opt("job_name", "The job's stable name: the job_name label of --metrics-file (default: the --job "
        "file's name without .yaml, else the --output path as written, {date}-style placeholders and "
        "dates left as {date})."),
    # ---- run: verdicts, checks, the job's state (pipeline/verdicts; docs/verdicts.md) ----------------
    Opt("max_bad_rows", "Exit 5 (the job complete, every row written) when more rows than this end with a "
        "verdict other than ok (truncated, empty, unparsable, schema_mismatch, invalid_tool_call, refused, "
        "failed_check, error): a count (N) or a share of the job's rows (P%).", metavar="N|P%"),
    Opt("repair", "Run rows with these verdicts again, changed (comma-separated: truncated, empty, unparsable, "
        "schema_mismatch, invalid_tool_call, failed_check, refused): truncated with max_tokens doubled, empty with "
        "another seed, refused with another seed and a turn asking for the answer (a heuristic), the others with a "
        "repair turn quoting what was wrong. Never the identical request twice; each row keeps its attempts, usage "
        "and cost summed.", metavar="VERDICT,...", commands=READERS, output=True),
    Opt("repair_attempts", "With --repair: the most extra attempts per row.", Int1, 2, commands=READERS, output=True),
    Opt("repair_max_tokens", "With --repair truncated: the most max_tokens a repaired row gets.", Int1, 4096,
        commands=READERS, output=True),
    Opt("schema_preflight", "Compile every distinct response_format and required tool schema once with the "
        "engine's structured-output backend (xgrammar) on CPU before the engines start; a schema that "
        "fails or passes --schema-timeout gives its rows error rows (schema_preflight_failed). Default: on for "
        "the vllm engine.", pair=True, commands=READERS),
    Opt("schema_timeout", "Seconds one schema's preflight compile may take.", click.FloatRange(min=0, min_open=True),
        30.0, commands=READERS),
    Opt("check", "A row check of your own: module:function, a function (importable from PYTHONPATH) that "
        "takes the output row as a dict and returns None to pass or a message to fail (verdict "
        "failed_check). From Python: a callable, or a pydantic model class the content must validate as.",
        metavar="MODULE:FUNCTION", output=True),
    Opt("check_schema", "A JSON schema file (JSON or YAML) every completion, parsed as JSON, must fit; "
        "else the row's verdict is failed_check, with jsonschema's message.", metavar="FILE", output=True),
    Opt("check_regex", "A regular expression every completion (stripped) must match as a whole; else "
        "the row's verdict is failed_check.", metavar="PATTERN", output=True),
    Opt("quiet", "No progress output.", is_flag=True, short="-q"),
    Opt("dry_run", "Read and validate everything, start no engine, write nothing; say what would run.",
        is_flag=True),
    # ---- run: requests and engines ------------------------------------------------------------
    Opt("seed_on_cpu", "Per-request `seed` on the CPU build of vLLM, which crashes on it: ignore it "
        "(with a warning in the row), give the row an error, or pass it to the engine anyway.",
        click.Choice(["ignore", "error", "engine"]), "ignore", output=True),
    Opt("tool_call_parser", "vLLM tool parser for tool_choice auto (e.g. llama3_json, hermes). "
        "Default: by model family.", output=True),
    Opt("engine", "fake: an instant echo engine, for tests and I/O benchmarks.",
        click.Choice(list(KINDS)), "vllm", output=True, commands=frozenset({RUN, ESTIMATE})),
    Opt("runner", "The kind of model the run serves, as vLLM's runner: generate (chat, completions) or "
        "pooling (embeddings, score, rerank). auto: pooling when the inputs are embeddings, score or rerank "
        "lines, else generate.",
        click.Choice(["auto", "generate", "pooling"]), "auto", commands=READERS, output=True),
    Opt("convert", "vLLM: turn the model into another kind (embed: a causal LM into an embedding "
        "model, last-token pooling; vLLM's auto does that for --runner pooling).",
        click.Choice(["auto", "none", "embed", "classify"]), engine=True, output=True),
    Opt("engine_option", "Options of the engine itself (tests).", multiple=True, metavar="KEY=VALUE",
        hidden=True, commands=frozenset({RUN, ESTIMATE})),
    Opt("executor", "local: engine processes on this machine; ray: engine actors on a Ray cluster.",
        click.Choice(["local", "ray"]), "local"),
    Opt("ray_address", "Ray cluster to join (default: start or join a local one)."),
    Opt("max_in_flight", "Requests held by each engine at once (default: 2048, or twice --max-num-seqs).",
        Int1),
    Opt("max_in_flight_bytes", "Image bytes (as data: URIs) held by each engine at once: fewer requests than "
        "--max-in-flight when they hold images.", Int1, 256 * 1024 * 1024),
    Opt("order", "auto: prefix order when it helps (decided on the first --order-buffer requests); "
        "prefix: requests sharing a prompt prefix reach the engines together, so the prefix is "
        "computed once while cached: the first --order-buffer requests are sent sorted at once, every later "
        "one is spilled to one of up to 256 key ranges on local temporary disk ($TMPDIR) and the ranges are "
        "sent sorted once the input is read; stream: the same with a bounded look-ahead of --order-buffer "
        "requests and no disk (prefixes further apart than it are computed again); sorted: the whole input "
        "read and sorted first (the first request waits for the whole input); input: the input's order. "
        "estimate takes the same order as run.",
        click.Choice(["auto", "prefix", "stream", "sorted", "input"]), "auto", commands=frozenset({RUN, ESTIMATE})),
    Opt("order_buffer", "With --order prefix or auto: the requests sent sorted first, and the most a key range "
        "sorts in memory; with stream: the look-ahead, requests held and sorted before the largest prefix "
        "groups are sent; with sorted: requests held in memory, more are sorted in runs on local temporary "
        "disk and merged.", Int1, 100_000, commands=frozenset({RUN, ESTIMATE})),
    Opt("order_buffer_bytes", "The same bound in image bytes (as data: URIs): prefix sends its first buffer, "
        "the look-ahead flushes, or sorted spills, once its requests hold this much, however few they are.",
        Int1, 512 * 1024 * 1024,
        commands=frozenset({RUN, ESTIMATE})),
    Opt("decode_first", "In prefix and sorted order: within each prefix group, the requests that may "
        "generate most (max_tokens x n) first, so that long decodes start early and short ones fill "
        "the tail (default: on; it changes nothing where every request has the same max_tokens).",
        pair=True, commands=frozenset({RUN, ESTIMATE})),
    Opt("identical_once", "Requests whose bodies are identical and whose answer they determine "
        "(temperature 0, their own seed, or embeddings and scores) are generated once and the answer "
        "written to each of their rows; identical prompts with sampling (no seed) are sent as one request "
        "with n (at most 32) and the choices split back per row; each row billed as sent (default: on).", pair=True,
        commands=frozenset({RUN})),
    Opt("max_engine_restarts", "Stop (exit 3, resumable) after this many engine deaths.", Int0, 50),
    Opt("data_parallel_size", "Number of engines. Default: one per group of --tensor-parallel-size "
        "GPUs; 1 on CPU.", Int1),
    # ---- run: vLLM engine arguments (EngineArgs names) ------------------------------------------
    Opt("dtype", "vLLM: weight dtype (auto, bfloat16, float16, float32).", engine=True, output=True),
    Opt("enforce_eager", "vLLM: skip torch.compile and CUDA graphs. Default: on for CPU (compile "
        "warm-up costs minutes and gains nothing there), off on GPU.", pair=True, engine=True),
    Opt("gpu_memory_utilization", "vLLM: share of GPU memory to use.",
        click.FloatRange(0, 1, min_open=True), engine=True),
    Opt("tensor_parallel_size", "vLLM: GPUs per engine (for models that do not fit on one GPU).",
        Int1, engine=True),
    Opt("max_num_seqs", "vLLM: most sequences in one engine step.", Int1, engine=True),
    Opt("block_size", {RUN: "vLLM: tokens per KV cache block (default: 16 on GPU, 128 on the CPU build); "
                            "--order auto judges prefix reuse in these blocks.",
                       ESTIMATE: "Tokens per KV cache block of the run, for the prompt tokens computed "
                                 "after prefix reuse and --order auto's decision (default: the installed "
                                 "vLLM build's, 16 on GPU, 128 on the CPU build)."},
        Int1, commands=frozenset({RUN, ESTIMATE}), engine=True),
    Opt("max_num_batched_tokens", "vLLM: most tokens in one engine step.", Int1, engine=True),
    Opt("enable_prefix_caching", "vLLM: reuse KV cache across shared prompt prefixes.", pair=True,
        engine=True),
    Opt("quantization", "vLLM: quantization method (e.g. fp8).", engine=True, output=True),
    Opt("kv_cache_dtype", "vLLM: KV cache dtype (auto, fp8).", engine=True, output=True),
    Opt("seed", "vLLM: engine-wide random seed.", int, engine=True, output=True),
    Opt("engine_arg", "Any other vLLM engine argument, e.g. --engine-arg block_size=32. Repeatable; "
        "part of the resume fingerprint.", multiple=True, metavar="KEY=VALUE", output=True),
    # ---- validate ------------------------------------------------------------------------------
    Opt("max_errors", "Print at most this many problems (all are counted).", Int0, 100,
        commands=frozenset({VALIDATE})),
    # ---- estimate ------------------------------------------------------------------------------
    Opt("completion_ratio", "Expected completion tokens as a share of the upper bound (default "
        "0.5, or calibrated).", Price, commands=frozenset({ESTIMATE})),
    Opt("calibrate_from", "Output folder of a previous run of this job: its _report.json gives the "
        "completion ratio and throughput.", commands=frozenset({ESTIMATE})),
    Opt("tokens_per_second", "Throughput per GPU (prompt + completion tokens/s) for GPU-hours "
        "(default: calibrated, else none).", click.FloatRange(min=0, min_open=True),
        commands=frozenset({ESTIMATE})),
    Opt("gpu_hour_usd", "Price of one GPU-hour for the compute-cost figure.", Price, 2.0,
        commands=frozenset({ESTIMATE})),
    Opt("workers", "Tokenizer processes (default: all cores).", Int1, commands=frozenset({ESTIMATE})),
    Opt("as_json", "Print one JSON object instead of the table.", is_flag=True, flag="--json",
        commands=frozenset({ESTIMATE, STATUS})),
    Opt("rows_file", "Write one row per request (tokens, bounds, costs, error) to this Parquet file.",
        commands=frozenset({ESTIMATE})),
    Opt("sample_run", "Run a seeded, stratified sample of N rows on the engine (into --output, as rows of "
        "the job) and extrapolate its measured completion lengths and throughput to the whole input, "
        "with 90% intervals. Run options (engine arguments, --format, ...) come from --job FILE.", Int1,
        metavar="N", commands=frozenset({ESTIMATE})),
    Opt("sample_run_seed", "With --sample-run: the seed that chooses the sample (the same rows every time).",
        int, 0, metavar="S", commands=frozenset({ESTIMATE})),
    Opt("deadline", "Plan for a deadline: how many engines (GPUs) of the calibrated kind finish by then. "
        "A date and time (2026-12-07T06:00, UTC unless it names a zone), a time of day (06:00 UTC) or "
        "a duration (8h).", metavar="TIME", commands=frozenset({ESTIMATE})),
    Opt("budget", "Plan for a budget in dollars: do our own GPUs (and the hosted alternative) fit it.",
        Price, metavar="USD", commands=frozenset({ESTIMATE})),
    # ---- status, report ------------------------------------------------------------------------
    Opt("compare", "A previous run's output folder: show the change from it.", metavar="PREV_DIR",
        commands=frozenset({REPORT})),
    Opt("page", "Where to write the HTML page (default: DIR/_report.html).", short="-o",
        commands=frozenset({REPORT})),
)

KEY_VALUE_OPTIONS = ("storage_option", "engine_arg", "engine_option", "sample", "sample_column", "route", "lora",
                     "limit_mm_per_prompt", "chat_template_kwargs")  # KEY=VALUE..., held as dicts
BY_NAME = {o.name: o for o in OPTIONS}
ENGINE_ARGS = tuple(o.name for o in OPTIONS if o.engine and RUN in o.commands)
OUTPUT_OPTIONS = tuple(o.name for o in OPTIONS if o.output and RUN in o.commands)
JOB_KEYS = frozenset({"inputs", *BY_NAME})  # what a job file may hold, for any command


def command_line(command: str, inputs: tuple[str, ...], values: dict[str, Any]) -> str:
    """The command that gives these values, with every option that differs from its default.
    Credentials are never shown: storage option values, values of keys named like secrets
    (`hf_token=`, `api_key=`), `user:password@` and signatures in URLs."""
    import json
    import shlex

    from pipeline.storage import redact, secret_name

    parts = ["pipeline", command, *map(shlex.quote, inputs)]
    for o in of(command):
        v = values.get(o.name)
        if v is None or v == o.default or v in ((), {}) or (o.is_flag and not v):
            continue
        if o.pair:
            parts.append(o.long if v else f"--no-{o.long[2:]}")
        elif o.is_flag:
            parts.append(o.long)
        elif isinstance(v, dict):
            for k, x in v.items():
                secret = o.name == "storage_option" or (secret_name(k) and x not in (None, True, False, ""))
                shown = "***" if secret else (x if isinstance(x, str) else json.dumps(x))
                parts += [o.long, shlex.quote(f"{k}={shown}")]
        elif isinstance(v, (tuple, list)):
            for x in v:
                parts += [o.long, shlex.quote(str(x))]
        else:
            parts += [o.long, shlex.quote(str(v))]
    return redact(" ".join(parts))


def checked(name: str, value: Any) -> Any:
    """A value given for option `name` from Python (a keyword argument), checked and converted
    as the command line checks its option (the table's type: choices, ranges, numbers), with the
    command line's message. None is the default."""
    from pipeline.exits import UserError

    o = BY_NAME[name]
    if value is None or name in KEY_VALUE_OPTIONS or o.type is None:
        return value
    if o.is_flag or o.pair:
        if not isinstance(value, bool):
            raise UserError(f"Invalid value for {o.long!r} ({name}=): {value!r} is not True or False.")
        return value
    kind = click.types.convert_type(o.type)
    try:
        if o.multiple:
            return tuple(kind.convert(v, None, None) for v in ([value] if isinstance(value, str) else value))
        if isinstance(value, bool) and isinstance(kind, (click.types.IntParamType, click.types.FloatParamType)):
            raise click.BadParameter(f"{value!r} is not a number.")  # True would read as 1
        return kind.convert(value, None, None)
    except click.BadParameter as e:
        raise UserError(f"Invalid value for {o.long!r} ({name}=): {e.message}") from None


def of(command: str) -> list[Opt]:
    return [o for o in OPTIONS if command in o.commands]


def add_options(command: str):
    """Decorator: the command's options from the table (in table order)."""
    def decorate(f):
        for opt in reversed(of(command)):
            f = opt.click_option(command)(f)
        return f
    return decorate
