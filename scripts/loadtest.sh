#!/usr/bin/env bash
# Load test: builds release binaries, starts chat-server on a free port with a
# temporary data directory, runs the chat-load scenarios against it, prints one
# summary table, stops the server and cleans up. After each scenario it
# prints the server's CPU by thread over that scenario (`server CPU` lines,
# from /proc/PID/task/*/stat), per acked message where the scenario acks
# messages; setup inside the scenario (registrations, logins) is included.
#
#   scripts/loadtest.sh [--quick] [--results DIR]
#
#   --quick        small scenarios; finishes in under a minute once built
#   --results DIR  keep each scenario's JSON result, table and command in DIR
#                  (scripts/bench.sh uses this to write BENCHMARKS.md)
#
# Exit status: 0 when every scenario ran and passed (targets missed are shown
# in the table, not failures), 1 when a scenario failed (lost messages, failed
# logins) or could not run.
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

MODE=full
RESULTS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) MODE=quick ;;
        --results) RESULTS=${2:?--results needs a directory}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "loadtest.sh: unknown argument $1" >&2; usage >&2; exit 64 ;;
    esac
    shift
done

cd "$(dirname "$0")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
echo "loadtest: building release binaries" >&2
cargo build --release --quiet --bin chat-server --bin chat-load
SERVER_BIN=$TARGET_DIR/release/chat-server
LOAD_BIN=$TARGET_DIR/release/chat-load

WORK=$(mktemp -d "${TMPDIR:-/tmp}/chat-loadtest.XXXXXX")
RESULTS=${RESULTS:-$WORK/results}
mkdir -p "$RESULTS"
rm -f "$RESULTS"/*.json "$RESULTS"/*.txt "$RESULTS"/*.cmd
SERVER_PID=""
FAILED=0

stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 10,000 idle connections need 10,000 descriptors in the server and as many
# in chat-load; both inherit this limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Benchmarks measure the server, not its abuse limits.
SERVER_FLAGS=()
if "$SERVER_BIN" --help | grep -q -- '--no-rate-limits'; then
    SERVER_FLAGS+=(--no-rate-limits)
fi

# start_server NAME [chat-server flags…]: starts a server, sets ADDR.
start_server() {
    local name=$1
    shift
    local dir=$WORK/$name
    mkdir -p "$dir"
    SERVER_CMD="chat-server --port 0 --data-dir DIR ${SERVER_FLAGS[*]} $*"
    "$SERVER_BIN" --port 0 --data-dir "$dir/data" --log-file "$dir/server.log" \
        "${SERVER_FLAGS[@]}" "$@" >"$dir/stdout" 2>"$dir/stderr" &
    SERVER_PID=$!
    for _ in $(seq 100); do
        ADDR=$(sed -n 's/^chat-server listening on //p' "$dir/stdout")
        [[ -n "$ADDR" ]] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "loadtest: chat-server exited at start:" >&2
            cat "$dir/stderr" >&2
            exit 1
        fi
        sleep 0.1
    done
    [[ -n "$ADDR" ]] || { echo "loadtest: chat-server did not start" >&2; exit 1; }
    echo "loadtest: server '$name' on $ADDR (pid $SERVER_PID): $SERVER_CMD" >&2
}

# thread_cpu: one line per thread of the server, "tid name ticks" (user +
# system CPU in clock ticks, from /proc/PID/task/TID/stat; the fields after
# the ")" that ends the thread's name are fixed, utime and stime are the
# 12th and 13th of them).
thread_cpu() {
    local task
    for task in /proc/"$SERVER_PID"/task/*; do
        [[ -r $task/stat ]] || continue
        printf '%s %s %s\n' "${task##*/}" "$(tr ' ' '_' <"$task/comm")" \
            "$(sed 's/.*) //' "$task/stat" | awk '{print $12 + $13}')"
    done
}

# thread_report BEFORE AFTER RESULT_TXT: the server's CPU per thread over
# the scenario, and per acked message where the scenario acks messages
# (issue 14's "loop thread ≤ 3 µs per message" is the chat-server line).
thread_report() {
    local acked ticks_per_sec
    acked=$(awk '$1 == "acked" {gsub(",", "", $2); print $2; exit}' "$3")
    ticks_per_sec=$(getconf CLK_TCK)
    awk -v acked="${acked:-0}" -v hz="$ticks_per_sec" '
        NR == FNR { before[$1] = $3; next }
        {
            used = $3 - before[$1]
            if (used <= 0) next
            seconds = used / hz
            if (acked > 0)
                printf "  server CPU     %-14s %6.2f s  %6.2f µs per acked message\n", $2, seconds, seconds * 1e6 / acked
            else
                printf "  server CPU     %-14s %6.2f s\n", $2, seconds
        }' "$1" "$2"
}

# run NAME chat-load-arguments…: runs one scenario, keeps its results.
run() {
    local name=$1
    shift
    local args=("$@")
    # --server-pid is only known now; spelled SERVER_PID in the command.
    for i in "${!args[@]}"; do
        [[ "${args[$i]}" == "@SERVER_PID@" ]] && args[$i]=$SERVER_PID
    done
    echo "loadtest: == $name: chat-load ${*}" >&2
    printf 'server: %s\nchat-load --addr ADDR %s\n' "$SERVER_CMD" "${*//@SERVER_PID@/SERVER_PID}" \
        >"$RESULTS/$name.cmd"
    thread_cpu >"$RESULTS/$name.cpu-before"
    if ! "$LOAD_BIN" --addr "$ADDR" --progress-secs 5 --json "$RESULTS/$name.json" "${args[@]}" \
        >"$RESULTS/$name.txt"; then
        FAILED=1
        echo "loadtest: scenario $name FAILED" >&2
    fi
    thread_cpu >"$RESULTS/$name.cpu-after"
    thread_report "$RESULTS/$name.cpu-before" "$RESULTS/$name.cpu-after" \
        "$RESULTS/$name.txt" >>"$RESULTS/$name.txt"
    cat "$RESULTS/$name.txt"
}

if [[ $MODE == quick ]]; then
    start_server fast --pbkdf2-iterations 1000
    run 1-logins logins --users 300 --concurrency 32 --resumes 2000
    run 2-messages-window messages --users 100 --window 16 --duration-secs 5 --grace-secs 3
    run 3-messages-rate messages --users 100 --rate 10000 --duration-secs 5 --grace-secs 3
    run 3b-groups-10 groups --users 200 --group-size 10 --window 2 --duration-secs 5 --grace-secs 3
    run 4-idle idle --connections 1000 --hold-secs 3 --server-pid @SERVER_PID@
    stop_server
    # Hashing has to cost something for the storm to mean anything; 100,000
    # iterations (about a sixth of the default) keeps the quick run short.
    start_server hash --pbkdf2-iterations 100000
    run 5-storm storm --users 20 --rate 2000 --duration-secs 10 --burst-at-secs 3 \
        --burst-logins 32 --burst-users 2 --burst-concurrency 16 --grace-secs 3
    stop_server
else
    start_server fast --pbkdf2-iterations 1000
    run 1-logins logins --users 5000 --concurrency 64 --resumes 20000
    run 2-messages-window messages --users 100 --window 16 --duration-secs 20
    run 3-messages-rate messages --users 100 --rate 10000 --duration-secs 20
    run 4-messages-window-1000 messages --users 1000 --window 4 --duration-secs 20
    run 4b-messages-window-5000 messages --users 5000 --window 1 --duration-secs 15
    # Fan-out: every member of every group sends (window 1); each message goes
    # to the other G-1 members.
    run 4c-groups-10 groups --users 1000 --group-size 10 --window 1 --duration-secs 20
    run 4d-groups-100 groups --users 1000 --group-size 100 --window 1 --duration-secs 20
    stop_server
    # Memory per connection at three sizes, each on a fresh server.
    start_server idle --pbkdf2-iterations 1000 --max-connections 12000
    run 5a-idle-1k idle --connections 1000 --hold-secs 5 --concurrency 128 \
        --server-pid @SERVER_PID@
    stop_server
    start_server idle --pbkdf2-iterations 1000 --max-connections 12000
    run 5b-idle-5k idle --connections 5000 --hold-secs 5 --concurrency 128 \
        --server-pid @SERVER_PID@
    stop_server
    # A fresh server, so its RSS baseline holds nothing but the registered users.
    start_server idle --pbkdf2-iterations 1000 --max-connections 12000
    run 5-idle-10k idle --connections 10000 --hold-secs 30 --concurrency 128 \
        --server-pid @SERVER_PID@
    stop_server
    # The same message runs over TLS (wss://, a gen-cert certificate).
    "$SERVER_BIN" gen-cert "$WORK/certs" >/dev/null
    start_server tls --pbkdf2-iterations 1000 \
        --tls-cert "$WORK/certs/cert.pem" --tls-key "$WORK/certs/key.pem"
    run 2t-messages-window-tls --ca-file "$WORK/certs/ca.pem" \
        messages --users 100 --window 16 --duration-secs 20
    run 3t-messages-rate-tls --ca-file "$WORK/certs/ca.pem" \
        messages --users 100 --rate 10000 --duration-secs 20
    stop_server
    # The default cost, 600,000 iterations.
    start_server hash
    run 6-logins-default-iterations logins --users 40 --concurrency 8 --resumes 5000
    run 7-storm storm --users 20 --rate 2000 --duration-secs 45 --burst-at-secs 10 \
        --burst-logins 100 --burst-users 4 --burst-concurrency 32
    stop_server
fi

echo
echo "Summary ($MODE run; $(nproc) cores)"
"$LOAD_BIN" summary "$RESULTS"/*.json | tee "$RESULTS/summary.md" || FAILED=1
if [[ $FAILED -ne 0 ]]; then
    echo "loadtest: SOME SCENARIOS FAILED" >&2
    exit 1
fi
