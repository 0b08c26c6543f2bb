#!/usr/bin/env bash
# What plain HTTP and /metrics cost the event loop: the closed-loop message
# scenario (100 users, window 16) against chat-server built at git ref BEFORE
# and against the work tree, quiet and while a scraper fetches /metrics
# every 100 ms (and the web client's index every second), alternating,
# --rounds times. Prints one table; loopback only, every run bounded by
# --seconds.
#
#   scripts/http-overhead.sh BEFORE [--seconds N] [--rounds N] [--before-target DIR]
#
# --before-target DIR uses binaries already built from BEFORE in DIR/release.
#
# Throughput on a shared two-core machine moves with whatever else runs, so
# the table also gives the CPU the event loop (the main thread) and the
# whole server spent per acked message, setup and scrapes included; a
# second table gives the loop's CPU per plain HTTP answer.
set -euo pipefail
cd "$(dirname "$0")/.."

BEFORE=${1:?usage: scripts/http-overhead.sh BEFORE [--seconds N] [--rounds N] [--before-target DIR]}
shift
SECONDS_PER_RUN=15
ROUNDS=2
BEFORE_TARGET=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) SECONDS_PER_RUN=${2:?--seconds needs a number}; shift ;;
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
        --before-target) BEFORE_TARGET=${2:?--before-target needs a directory}; shift ;;
        *) echo "http-overhead.sh: unknown argument $1" >&2; exit 64 ;;
    esac
    shift
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/chat-http-overhead.XXXXXX")
SERVER_PID=""
SCRAPER_PID=""
cleanup() {
    [[ -n $SCRAPER_PID ]] && kill "$SCRAPER_PID" 2>/dev/null || true
    [[ -n $SERVER_PID ]] && kill -KILL "$SERVER_PID" 2>/dev/null || true
    git worktree remove --force "$WORK/before-src" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "http-overhead: building $BEFORE and the work tree (release)" >&2
if [[ -z $BEFORE_TARGET ]]; then
    git worktree add --quiet --detach "$WORK/before-src" "$BEFORE"
    BEFORE_TARGET=$PWD/target/compare-before
    (cd "$WORK/before-src" && CARGO_TARGET_DIR=$BEFORE_TARGET cargo build --release --quiet -p server -p client)
fi
cargo build --release --quiet -p server -p client
AFTER_TARGET=${CARGO_TARGET_DIR:-$PWD/target}

# scrape ADDR COUNTS: one long-lived process (so the scraper's own CPU is
# small next to the server's) that fetches /metrics every 100 ms and / every
# tenth time, appending each answer's status code to COUNTS until killed.
scrape() {
    exec python3 - "$1" "$2" <<'PY'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
out = open(sys.argv[2], "a", buffering=1)
i = 0
while True:
    for path in ["/metrics"] + (["/"] if i % 10 == 0 else []):
        try:
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            out.write(data[9:12].decode() + "\n")
        except OSError:
            out.write("error\n")
    i += 1
    time.sleep(0.1)
PY
}

# run TARGET LABEL SCRAPE: one fresh server, the closed-loop scenario.
run() {
    local target=$1 label=$2 scraping=$3
    local dir=$WORK/$RANDOM
    mkdir -p "$dir"
    "$target/release/chat-server" --host 127.0.0.1 --port 0 --data-dir "$dir/data" \
        --log-file "$dir/server.log" --no-rate-limits --pbkdf2-iterations 1000 \
        >"$dir/stdout" 2>"$dir/stderr" &
    SERVER_PID=$!
    local addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/^chat-server listening on //p' "$dir/stdout" 2>/dev/null || true)
        [[ -n $addr ]] && break
        sleep 0.1
    done
    touch "$dir/scrapes"
    if [[ $scraping == yes ]]; then
        scrape "$addr" "$dir/scrapes" &
        SCRAPER_PID=$!
    fi
    "$target/release/chat-load" --addr "$addr" --progress-secs 0 --json "$dir/result.json" \
        messages --users 100 --window 16 --duration-secs "$SECONDS_PER_RUN" >/dev/null || true
    if [[ -n $SCRAPER_PID ]]; then
        kill "$SCRAPER_PID" 2>/dev/null || true
        wait "$SCRAPER_PID" 2>/dev/null || true
        SCRAPER_PID=""
    fi
    # CPU ticks (user + system) of the event loop (the main thread) and of
    # the whole process, for the whole run.
    local ticks loop_ticks
    ticks=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat")
    loop_ticks=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/task/$SERVER_PID/stat")
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    local ok total
    ok=$(grep -c '^200$' "$dir/scrapes" || true)
    total=$(wc -l <"$dir/scrapes")
    python3 - "$dir/result.json" "$label" "$ok/$total" "$loop_ticks" "$ticks" "$(getconf CLK_TCK)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
e2e = r.get("end_to_end_latency", {})
acked = max(r.get("acked", 0), 1)
per_message = lambda ticks: float(ticks) / float(sys.argv[6]) / acked * 1e6
print(f"| {sys.argv[2]} | {r.get('acked_per_sec', 0):,.0f} | {e2e.get('p50_ms', 0):.2f} | "
      f"{e2e.get('p99_ms', 0):.2f} | {per_message(sys.argv[4]):.2f} | {per_message(sys.argv[5]):.2f} | "
      f"{r.get('lost', '?')} | {sys.argv[3]} |")
PY
}

echo "| run | acked/s | e2e p50 ms | e2e p99 ms | loop CPU µs/msg | process CPU µs/msg | lost | HTTP 200s |"
echo "|---|---|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
    run "$BEFORE_TARGET" "before ($round)" no
    run "$AFTER_TARGET" "after, not scraped ($round)" no
    run "$AFTER_TARGET" "after, scraping /metrics every 100 ms ($round)" yes
done

# per_request: the event loop's CPU for one plain HTTP answer, measured over
# 2,000 sequential requests per path to a server that has just carried a
# short message run (so /metrics has numbers to encode).
per_request() {
    local dir=$WORK/per-request
    mkdir -p "$dir"
    "$AFTER_TARGET/release/chat-server" --host 127.0.0.1 --port 0 --data-dir "$dir/data" \
        --log-file "$dir/server.log" --no-rate-limits --pbkdf2-iterations 1000 \
        >"$dir/stdout" 2>"$dir/stderr" &
    SERVER_PID=$!
    local addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/^chat-server listening on //p' "$dir/stdout" 2>/dev/null || true)
        [[ -n $addr ]] && break
        sleep 0.1
    done
    "$AFTER_TARGET/release/chat-load" --addr "$addr" --progress-secs 0 \
        messages --users 100 --window 16 --duration-secs 2 >/dev/null || true
    echo
    echo "| path | bytes | loop CPU µs per request |"
    echo "|---|---|---|"
    local path before after
    for path in /metrics / /healthz; do
        before=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/task/$SERVER_PID/stat")
        bytes=$(python3 - "$addr" "$path" <<'PY'
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
for _ in range(2000):
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"GET {sys.argv[2]} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
print(len(data))
PY
)
        after=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/task/$SERVER_PID/stat")
        echo "| $path | $bytes | $(( (after - before) * 1000000 / $(getconf CLK_TCK) / 2000 )) |"
    done
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
per_request
