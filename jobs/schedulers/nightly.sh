#!/usr/bin/env bash
# Run a job file every night from cron; retry only what a rerun can finish.
#   crontab:  30 1 * * *  /srv/pipeline/jobs/schedulers/nightly.sh /srv/pipeline/jobs/nightly-llama-8b.yaml
# Exit codes (pipeline/exits.py): 0 done; 1 an error to fix and 2 bad usage: retrying will not
# help; 3 incomplete (interrupted, storage down, another run holds the output): rerun finishes it;
# 4 the engine could not start.
set -u
JOB=${1:?usage: nightly.sh JOB.yaml [more pipeline run options]}
shift
PIPELINE=${PIPELINE:-$(dirname "$0")/../../.venv/bin/pipeline}
TRIES=${TRIES:-4}
WAIT=${WAIT:-300}
for try in $(seq 1 "$TRIES"); do
    "$PIPELINE" run --job "$JOB" "$@"
    code=$?
    [ "$code" -ne 3 ] && exit "$code"
    echo "nightly.sh: incomplete (exit 3), try $try of $TRIES; rerunning in ${WAIT}s" >&2
    sleep "$WAIT"
done
exit 3
