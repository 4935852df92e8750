"""The baseline: what a user could write in twenty lines with vLLM's `LLM.chat`.

One `LLM.chat` call over all the requests of an OpenAI Batch file (per-request SamplingParams
from the request bodies), then one Parquet file with custom_id, content and token counts
(prompt, completion, and prompt tokens served from vLLM's prefix cache: `num_cached_tokens`).
No validation, no checkpoints, no resume, no error rows: a bad request or a crash loses the batch.

    python bench/bare_llm_chat.py IN.jsonl OUT.parquet --model PATH [--engine-args '{"enforce_eager": true}']
"""

import argparse
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
from vllm import LLM, SamplingParams

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "max_tokens", "presence_penalty",
            "frequency_penalty", "repetition_penalty", "stop", "n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--model", required=True)
    parser.add_argument("--engine-args", default="{}", help="LLM(...) keyword arguments as a JSON object")
    args = parser.parse_args()
    t0 = time.monotonic()

    rows = [json.loads(line) for line in open(args.input) if line.strip()]
    llm = LLM(args.model, **json.loads(args.engine_args))
    print("BENCH ready", flush=True)  # the benchmark's mark: the engine is up
    t1 = time.monotonic()
    params = [SamplingParams(**{k: r["body"][k] for k in SAMPLING if k in r["body"]}) for r in rows]
    outputs = llm.chat([r["body"]["messages"] for r in rows], params, use_tqdm=False)
    t2 = time.monotonic()
    pq.write_table(pa.table({
        "custom_id": [r["custom_id"] for r in rows],
        "content": [o.outputs[0].text for o in outputs],
        "prompt_tokens": [len(o.prompt_token_ids) for o in outputs],
        "completion_tokens": [sum(len(c.token_ids) for c in o.outputs) for o in outputs],
        "cached_tokens": [o.num_cached_tokens or 0 for o in outputs],
    }), args.output)
    timings = {"start_s": t1 - t0, "generate_s": t2 - t1, "write_s": time.monotonic() - t2}
    print("BENCH timings " + json.dumps({k: round(v, 3) for k, v in timings.items()}), flush=True)


if __name__ == "__main__":
    main()
