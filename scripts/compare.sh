#!/usr/bin/env bash
# Before/after in one run: builds chat-server and chat-load at git ref BEFORE
# (in a temporary worktree) and at the work tree, then runs the same message
# scenarios against each — alternating, twice — and prints one table.
# Each side uses its own chat-load (the protocol changed between them).
#
#   scripts/compare.sh BEFORE [--seconds N] [--before-target DIR] [--many-users]
#                      [--after-burst]
#
# --before-target DIR uses binaries already built from BEFORE in DIR/release
# instead of building them.
#
# Scenarios: closed loop (100 users, window 16) and open loop (100 users,
# 10,000 msg/s); the current side once with receipts (the default) and once
# with --no-receipts. --many-users adds closed loops of 1,000 users (window
# 4) and 5,000 users (window 1), receipts on both sides: how throughput
# holds as connections grow. --after-burst adds 10,000 msg/s on a server
# that has just run a 20 s closed loop (100 users, window 16): what a burst
# leaves behind (indexes, WAL) for the traffic after it.
# Loopback only; every run is bounded by --seconds (the burst by 20 s).
set -euo pipefail
cd "$(dirname "$0")/.."

BEFORE=${1:?usage: scripts/compare.sh BEFORE [--seconds N]}
shift
SECONDS_PER_RUN=10
BEFORE_TARGET=""
MANY_USERS=""
AFTER_BURST=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --many-users) MANY_USERS=1 ;;
        --after-burst) AFTER_BURST=1 ;;
        --seconds) SECONDS_PER_RUN=${2:?--seconds needs a number}; shift ;;
        --before-target) BEFORE_TARGET=${2:?--before-target needs a directory}; shift ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 64 ;;
    esac
    shift
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/chat-compare.XXXXXX")
SERVER_PID=""
cleanup() {
    [[ -n $SERVER_PID ]] && kill -KILL "$SERVER_PID" 2>/dev/null || true
    git worktree remove --force "$WORK/before-src" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "compare: building $BEFORE and the work tree (release)" >&2
if [[ -z $BEFORE_TARGET ]]; then
    git worktree add --quiet --detach "$WORK/before-src" "$BEFORE"
    BEFORE_TARGET=$PWD/target/compare-before
    (cd "$WORK/before-src" && CARGO_TARGET_DIR=$BEFORE_TARGET cargo build --release --quiet -p server -p client)
fi
cargo build --release --quiet -p server -p client
AFTER_TARGET=${CARGO_TARGET_DIR:-$PWD/target}

# run SIDE_TARGET LABEL chat-load-args…: one fresh server, one scenario.
run() {
    local target=$1 label=$2
    shift 2
    local dir=$WORK/$RANDOM
    mkdir -p "$dir"
    "$target/release/chat-server" --host 127.0.0.1 --port 0 --data-dir "$dir/data" \
        --log-file "$dir/server.log" --no-rate-limits --pbkdf2-iterations 1000 \
        >"$dir/stdout" 2>"$dir/stderr" &
    SERVER_PID=$!
    local addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/^chat-server listening on //p' "$dir/stdout")
        [[ -n $addr ]] && break
        sleep 0.1
    done
    if [[ -n ${BURST_SECS:-} ]]; then
        "$target/release/chat-load" --addr "$addr" --progress-secs 0 \
            messages --users 100 --window 16 --duration-secs "$BURST_SECS" >/dev/null || true
    fi
    "$target/release/chat-load" --addr "$addr" --progress-secs 0 --json "$dir/result.json" \
        "$@" --duration-secs "$SECONDS_PER_RUN" >/dev/null || true
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    python3 - "$dir/result.json" "$label" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
e2e, ack = r.get("end_to_end_latency", {}), r.get("ack_latency", {})
print(f"| {sys.argv[2]} | {r.get('acked_per_sec', 0):,.0f} | {e2e.get('p50_ms', 0):.2f} | "
      f"{e2e.get('p99_ms', 0):.2f} | {ack.get('p99_ms', 0):.2f} | {r.get('lost', '?')} |")
PY
}

echo "| run | acked/s | e2e p50 ms | e2e p99 ms | ack p99 ms | lost |"
echo "|---|---|---|---|---|---|"
for round in 1 2; do
    run "$BEFORE_TARGET" "before: closed loop, window 16 ($round)" messages --users 100 --window 16
    run "$AFTER_TARGET" "after, receipts: closed loop, window 16 ($round)" messages --users 100 --window 16
    run "$AFTER_TARGET" "after, no receipts: closed loop, window 16 ($round)" messages --users 100 --window 16 --no-receipts
    run "$BEFORE_TARGET" "before: 10,000 msg/s ($round)" messages --users 100 --rate 10000
    run "$AFTER_TARGET" "after, receipts: 10,000 msg/s ($round)" messages --users 100 --rate 10000
    if [[ -n $AFTER_BURST ]]; then
        BURST_SECS=20 run "$BEFORE_TARGET" "before: 10,000 msg/s after a burst ($round)" messages --users 100 --rate 10000
        BURST_SECS=20 run "$AFTER_TARGET" "after: 10,000 msg/s after a burst ($round)" messages --users 100 --rate 10000
    fi
    if [[ -n $MANY_USERS ]]; then
        run "$BEFORE_TARGET" "before: 1,000 users, window 4 ($round)" messages --users 1000 --window 4
        run "$AFTER_TARGET" "after: 1,000 users, window 4 ($round)" messages --users 1000 --window 4
        run "$BEFORE_TARGET" "before: 5,000 users, window 1 ($round)" messages --users 5000 --window 1
        run "$AFTER_TARGET" "after: 5,000 users, window 1 ($round)" messages --users 5000 --window 1
    fi
done
