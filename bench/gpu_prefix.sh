#!/usr/bin/env bash
# Prefix-aware scheduling on a GPU (issue #11): the shuffled shared-document workload (and, with
# WORKLOAD=both, the no-shared-prefix one) through the bare LLM.chat script, `pipeline run` and
# vLLM's run_batch on ONE GPU, the same model, engine settings and pinned KV cache for all three.
#
#   MODEL=/models/Llama-3.1-8B-Instruct bench/gpu_prefix.sh
#   MODEL=... DOCS=512 QUESTIONS=16 KV_CACHE_TOKENS=200000 bench/gpu_prefix.sh --note "H100 trial"
#
# Defaults: 256 documents of ~500 words x 16 questions = 4096 requests, max_tokens 16, KV cache
# half the distinct shared-prefix tokens (about 99k tokens, ~12 GiB for Llama-3.1-8B), block
# size 16, 2 repeats. Results: bench/results/latest.md and a JSON file beside it. Expected duration
# with an 8B model: 6 runs of 1.5-4 minutes each (engine start dominates), about 15 minutes.
# Extra arguments go to bench/engines.py (e.g. --tools bare,pipeline,pipeline_input,run_batch).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MODEL:?set MODEL to a local model folder, e.g. MODEL=/models/Llama-3.1-8B-Instruct}"
PY=${PY:-.venv/bin/python}
args=(--model "$MODEL" --gpus 1 --workload "${WORKLOAD:-docs}" --docs "${DOCS:-256}"
      --questions "${QUESTIONS:-16}" --doc-words "${DOC_WORDS:-500}" --docs-max-tokens "${MAX_TOKENS:-16}"
      --repeats "${REPEATS:-2}")
if [[ -n "${KV_CACHE_TOKENS:-}" ]]; then args+=(--kv-cache-tokens "$KV_CACHE_TOKENS"); fi
exec "$PY" bench/engines.py "${args[@]}" "$@"
