#!/usr/bin/env bash
# Both workloads (shuffled shared documents, and short mixed requests with nothing shared) on ONE
# GPU with the embedded model, through the bare LLM.chat script, `pipeline run` and vLLM's
# run_batch: the table `make bench` prints, sized to finish in under 8 minutes (6 runs of a 135M
# model; engine start dominates). Needs the GPU install (`make install ENGINE=gpu`).
#
#   bench/gpu.sh                       # embedded SmolLM2, 64 documents x 8 questions, 1 repeat
#   MODEL=/models/Llama-3.1-8B-Instruct DOCS=256 QUESTIONS=16 bench/gpu.sh   # the full-size run
set -euo pipefail
cd "$(dirname "$0")/.."
export MODEL=${MODEL:-smollm2} WORKLOAD=both DOCS=${DOCS:-64} QUESTIONS=${QUESTIONS:-8}
export DOC_WORDS=${DOC_WORDS:-400} REPEATS=${REPEATS:-1}
exec timeout "${LIMIT:-480}" bench/gpu_prefix.sh "$@"
