#!/usr/bin/env bash
# What a message costs in cluster mode, and where the CPU goes: the same
# `chat-load messages` run (receipts on) against
#   - one server on SQLite (the default),
#   - one server on PostgreSQL (no bus),
#   - 1, 2 and 3 servers in cluster mode (PostgreSQL + NATS), the load
#     generator spreading its connections over them in turn (user 2k and
#     2k+1 talk, so with two or three servers every message crosses NATS),
# each on a fresh database, one after the other in one run. For each it
# prints msg/s, e2e and ack p99, and the CPU per acked message of each part:
# the servers' loop threads, storage threads, bus threads, the PostgreSQL
# backends, nats-server, and chat-load itself (from /proc, before and after).
#
#   scripts/cluster-bench.sh [--seconds N] [--users U] [--window W | --rate R]
#
# Needs PostgreSQL at CHAT_BENCH_POSTGRES (default
# postgres://postgres@127.0.0.1:5432/postgres; it creates and drops a
# database per run) and NATS at CHAT_BENCH_NATS (default
# nats://127.0.0.1:4222). Loopback only; every run is bounded by --seconds.
# On a 2-core machine scaling cannot show: read it as cost per message.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=8
USERS=100
LOAD=(--window 16)
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) SECONDS_PER_RUN=${2:?--seconds needs a number}; shift ;;
        --users) USERS=${2:?--users needs a number}; shift ;;
        --window) LOAD=(--window "${2:?--window needs a number}"); shift ;;
        --rate) LOAD=(--rate "${2:?--rate needs a number}"); shift ;;
        -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "cluster-bench.sh: unknown argument $1" >&2; exit 64 ;;
    esac
    shift
done
ADMIN_URL=${CHAT_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
NATS_URL=${CHAT_BENCH_NATS:-nats://127.0.0.1:4222}

cargo build --release --quiet -p server -p client
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/chat-cluster-bench.XXXXXX")
PIDS=()
DATABASE=""
cleanup() {
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    [[ -n $DATABASE ]] && psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DATABASE WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# CPU seconds (utime + stime) of each part, as `part seconds` lines:
# every thread of the given chat-server pids by name, every postgres
# process, nats-server, and the given chat-load pid.
cpu_snapshot() {
    python3 - "$@" <<'PY'
import os, sys
tick = os.sysconf("SC_CLK_TCK")
def cpu(path):
    try:
        fields = open(path).read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick
    except OSError:
        return 0.0
def name(path):
    try:
        return open(path).read().strip()
    except OSError:
        return ""
parts = {}
servers, load = sys.argv[1].split(","), sys.argv[2]
for pid in filter(None, servers):
    for tid in os.listdir(f"/proc/{pid}/task"):
        thread = name(f"/proc/{pid}/task/{tid}/comm")
        part = {"chat-server": "loop", "storage": "storage", "bus": "bus",
                "checkpoint": "storage"}.get(thread, "other")
        if thread.startswith("hasher"):
            part = "hasher"
        parts[part] = parts.get(part, 0) + cpu(f"/proc/{pid}/task/{tid}/stat")
for pid in filter(str.isdigit, os.listdir("/proc")):
    comm = name(f"/proc/{pid}/comm")
    if comm in ("postgres", "nats-server"):
        part = "postgres" if comm == "postgres" else "nats"
        parts[part] = parts.get(part, 0) + cpu(f"/proc/{pid}/stat")
if load:
    parts["chat-load"] = cpu(f"/proc/{load}/stat")
for part, seconds in parts.items():
    print(part, seconds)
PY
}

# start_server DIR ARGS…: one chat-server; its address goes in ADDR.
start_server() {
    local dir=$1
    shift
    mkdir -p "$dir"
    "$BIN/chat-server" --host 127.0.0.1 --port 0 --data-dir "$dir/data" \
        --log-file "$dir/server.log" --no-rate-limits --pbkdf2-iterations 1000 \
        "$@" >"$dir/stdout" 2>"$dir/stderr" &
    PIDS+=($!)
    for _ in $(seq 200); do
        ADDR=$(sed -n 's/^chat-server listening on //p' "$dir/stdout")
        [[ -n $ADDR ]] && return
        sleep 0.1
    done
    echo "cluster-bench.sh: a server did not start:" >&2
    cat "$dir/stderr" >&2
    exit 1
}

# run LABEL NODES MODE: MODE is sqlite, postgres or cluster.
run() {
    local label=$1 nodes=$2 mode=$3 dir=$WORK/$RANDOM
    mkdir -p "$dir"
    local args=()
    if [[ $mode != sqlite ]]; then
        DATABASE=chat_bench_$$_$RANDOM
        psql -q "$ADMIN_URL" -c "CREATE DATABASE $DATABASE" >/dev/null
        args+=(--database "${ADMIN_URL%/*}/$DATABASE")
    fi
    local addrs=() prefix=bench$$x$RANDOM
    for n in $(seq "$nodes"); do
        local node_args=("${args[@]}")
        if [[ $mode == cluster ]]; then
            node_args+=(--nats "$NATS_URL" --nats-prefix "$prefix" --node-id "node$n")
        fi
        start_server "$dir/node$n" "${node_args[@]}"
        addrs+=("$ADDR")
    done
    local joined servers
    joined=$(IFS=,; echo "${addrs[*]}")
    servers=$(IFS=,; echo "${PIDS[*]}")
    # From before chat-load starts to its end: its setup (registrations and
    # logins of --users, cheap at 1,000 PBKDF2 iterations) is included.
    cpu_snapshot "$servers" "" >"$dir/cpu.before"
    "$BIN/chat-load" --addr "$joined" --progress-secs 0 --json "$dir/result.json" \
        messages --users "$USERS" "${LOAD[@]}" --duration-secs "$SECONDS_PER_RUN" \
        >"$dir/load.out" 2>&1 &
    local load=$!
    local last=$dir/cpu.last
    while kill -0 "$load" 2>/dev/null; do
        cpu_snapshot "$servers" "$load" >"$last.tmp" && mv "$last.tmp" "$last"
        sleep 0.5
    done
    wait "$load" || true
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
    if [[ -n $DATABASE ]]; then
        psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DATABASE WITH (FORCE)" >/dev/null
        DATABASE=""
    fi
    python3 - "$dir" "$label" <<'PY'
import json, sys
d, label = sys.argv[1], sys.argv[2]
r = json.load(open(f"{d}/result.json"))
def snap(name):
    out = {}
    for line in open(f"{d}/{name}"):
        part, seconds = line.split()
        out[part] = float(seconds)
    return out
before, after = snap("cpu.before"), snap("cpu.last")
acked = r.get("acked", 0)
us = lambda part: (after.get(part, 0) - before.get(part, 0)) / max(acked, 1) * 1e6
e2e, ack = r.get("end_to_end_latency", {}), r.get("ack_latency", {})
parts = ["loop", "storage", "bus", "postgres", "nats", "chat-load"]
server_side = sum(us(p) for p in ["loop", "storage", "bus", "hasher", "other", "postgres", "nats"])
print(f"| {label} | {r.get('acked_per_sec', 0):,.0f} | {e2e.get('p99_ms', 0):.2f} | "
      f"{ack.get('p99_ms', 0):.2f} | {r.get('lost', '?')} | "
      + " | ".join(f"{us(p):.1f}" for p in parts) + f" | {server_side:.1f} |")
PY
}

echo "chat-load messages --users $USERS ${LOAD[*]} --duration-secs $SECONDS_PER_RUN (receipts on); CPU µs per acked message"
echo "| setup | acked/s | e2e p99 ms | ack p99 ms | lost | loop | storage | bus | PostgreSQL | NATS | chat-load | server side total |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
run "1 server, SQLite" 1 sqlite
run "1 server, PostgreSQL" 1 postgres
run "cluster, 1 server" 1 cluster
run "cluster, 2 servers" 2 cluster
run "cluster, 3 servers" 3 cluster
