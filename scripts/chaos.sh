#!/usr/bin/env bash
# The fault-injection checker (server/tests/chaos.rs) for longer than the
# test suite runs it: seed after seed, each for a few minutes, until the time
# is up or one fails. Every run prints its seed; CHAOS_SEED replays one (the
# same choices and faults in the same order; the server's own timing differs
# from run to run, so a replay is a close repetition, not an exact one).
#
#   scripts/chaos.sh [--minutes N] [--run-minutes M] [--seed S] [--only WORD]
#     --minutes N      total time (default 10)
#     --run-minutes M  length of each run's fault phase (default 2)
#     --seed S         run this one seed once
#     --only WORD      only the runs whose test name has WORD: `postgres`,
#                      `cluster` (each needs PostgreSQL; cluster, nats-server)
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=10
RUN_MINUTES=2
SEED=
ONLY=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --minutes) MINUTES=${2:?--minutes needs a number}; shift ;;
        --run-minutes) RUN_MINUTES=${2:?--run-minutes needs a number}; shift ;;
        --seed) SEED=${2:?--seed needs a number}; shift ;;
        --only) ONLY=${2:?--only needs a word}; shift ;;
        -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "chaos.sh: unknown argument $1" >&2; exit 64 ;;
    esac
    shift
done

cargo build --release -p server --tests >/dev/null
run() {
    CHAOS_SECONDS=$((RUN_MINUTES * 60)) CHAOS_SEED=$1 \
        cargo test --release -q -p server --test chaos -- --nocapture $ONLY 2>&1 |
        grep -E 'chaos seed|panicked|^test result|lost|names two|order|refused|stored' || true
}

if [[ -n $SEED ]]; then
    run "$SEED"
    exit
fi
END=$(($(date +%s) + MINUTES * 60))
RUNS=0
while [[ $(date +%s) -lt $END ]]; do
    SEED=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
    OUTPUT=$(run "$SEED")
    echo "$OUTPUT"
    RUNS=$((RUNS + 1))
    if ! grep -q 'test result: ok' <<<"$OUTPUT"; then
        echo "chaos.sh: seed $SEED FAILED after $RUNS runs (replay: scripts/chaos.sh --seed $SEED)"
        exit 1
    fi
done
echo "chaos.sh: $RUNS seeds passed"
