#!/usr/bin/env bash
# Instruction counts of the per-message path: a regression guard that does
# not depend on timing (timings on a shared 2-core machine move by tens of
# percent from run to run; instruction counts move by about one percent).
#
# What it measures. chat-server (release) runs under
# `valgrind --tool=callgrind --separate-threads=yes`, which counts the
# instructions each thread executes. A native chat-load sends 1:1 messages
# at a fixed, modest rate (valgrind runs the server ~50x slower) with
# receipts on (the default), so every message is: frame in, dispatch, one
# storage insert, ack out, delivery out, `Received` in, `Delivered` out.
# Setup (server start, schema, registrations, logins, shutdown) is excluded
# by subtraction: the same load runs twice, SHORT and LONG seconds, each
# against a fresh server, and
#
#     instructions per message = (Ir(LONG) - Ir(SHORT)) / (acked(LONG) - acked(SHORT))
#
# per thread. Everything that does not grow with messages cancels exactly.
# (Zeroing the counters with `callgrind_control --zero` once the load runs
# was the other choice; it needs the acked count at the moment of zeroing,
# which chat-load only reports on a once-a-second progress line, and it
# still counts the first messages' setup tail. The subtraction has exact
# denominators and needs no timing.)
#
# How to read it. "loop" is the event-loop thread (the main thread:
# sockets, WebSocket frames, JSON, dispatch); "storage" is the SQLite
# thread. The storage figure moves more than the loop's: the storage
# thread commits in groups whose size depends on how many commands were
# waiting, i.e. on timing. Then the loop's top functions (self and
# inclusive instructions per message, from `callgrind_annotate` of both
# runs subtracted function by function) show where the loop's instructions
# go. Last, each thread is checked against scripts/callgrind-baseline.txt:
# more than its tolerance above the baseline exits 1. Measured spread and
# the reasoning for the tolerances are at LOOP_TOLERANCE_PERCENT below and
# in scripts/bench-reading.md ("Instruction counts").
#
# How to run it (about a minute once built; loopback only):
#
#   scripts/callgrind.sh                    measure, print, compare
#   scripts/callgrind.sh --update-baseline  measure and rewrite the baseline
#   scripts/callgrind.sh --keep DIR         also keep the callgrind.out files
#                                           (for callgrind_annotate, kcachegrind)
#
# Function names need debug line tables: the workspace's release profile
# has `debug = 1`, so the normal release build is the one measured. Counts
# are only comparable between builds of the same toolchain and flags, and
# between runs of the same load (the baseline records the load; a change
# of USERS, RATE, SHORT or LONG needs --update-baseline).
set -euo pipefail
cd "$(dirname "$0")/.."

# The load. 20 users (10 pairs) at 100 messages/s. Under valgrind the
# server's threads share one core at ~1/50 of native speed: a message takes
# it ~1.5 ms, so at 300/s it was ~45% busy and how much work was batched
# (Delivered receipts covering several messages, group commits, frames per
# wake-up) depended on timing: over 5 runs at 300/s the loop's count spread
# 2.8% and the storage thread's 9%. At 100/s messages are mostly handled
# one at a time and the spread fell below 1% for both. Few users keep
# setup (PBKDF2 under valgrind) short; it cancels anyway.
USERS=20
RATE=100
SHORT_SECS=3
LONG_SECS=33
# Tolerances over the baseline. Over 5 runs at one commit the counts
# spread (max-min over mean) 1.0% for the loop and 0.8% for
# storage; the tolerances sit well above that and below the smallest change
# worth seeing. A busier machine only batches more, which lowers the counts,
# so noise does not push them up. Storage gets more room: its
# group commits still depend on timing.
LOOP_TOLERANCE_PERCENT=3
STORAGE_TOLERANCE_PERCENT=5
# Bounds on every wait.
LISTEN_TIMEOUT_SECS=60
LOAD_TIMEOUT_SECS=120
EXIT_TIMEOUT_SECS=60

BASELINE=scripts/callgrind-baseline.txt
UPDATE_BASELINE=""
KEEP=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --update-baseline) UPDATE_BASELINE=1 ;;
        --keep) KEEP=${2:?--keep needs a directory}; shift ;;
        -h | --help) sed -n '2,48p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "callgrind.sh: unknown argument $1" >&2; exit 64 ;;
    esac
    shift
done
for tool in valgrind callgrind_annotate python3; do
    command -v "$tool" >/dev/null || { echo "callgrind.sh: needs $tool" >&2; exit 69; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/chat-callgrind.XXXXXX")
SERVER_PID=""
cleanup() {
    [[ -n $SERVER_PID ]] && kill -KILL "$SERVER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "callgrind: building chat-server and chat-load (release)" >&2
cargo build --release --quiet -p server -p client
TARGET=${CARGO_TARGET_DIR:-$PWD/target}/release
LOAD="messages --users $USERS --rate $RATE"

# stop_server: SIGTERM, then wait (bounded) for callgrind to write its files.
stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local waited=0
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        if ((waited >= EXIT_TIMEOUT_SECS * 10)); then
            echo "callgrind: the server did not exit ${EXIT_TIMEOUT_SECS}s after SIGTERM" >&2
            exit 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# thread_file DIR PATTERN: the per-thread callgrind file that names the
# function PATTERN (the thread's own run function, found only in it).
thread_file() {
    local found
    found=$(grep -lE "^c?fn=\([0-9]+\) $2\$" "$1"/callgrind.out.*-* || true)
    if [[ $(wc -w <<<"$found") -ne 1 ]]; then
        echo "callgrind: expected one thread running $2 in $1, found: ${found:-none}" >&2
        exit 1
    fi
    echo "$found"
}

# run NAME SECONDS: one fresh server under callgrind, one bounded load;
# leaves $WORK/NAME/{loop,storage}.out and result.json.
run() {
    local name=$1 seconds=$2 dir=$WORK/$1
    mkdir -p "$dir"
    valgrind --tool=callgrind --separate-threads=yes \
        --callgrind-out-file="$dir/callgrind.out.%p" \
        "$TARGET/chat-server" --host 127.0.0.1 --port 0 --data-dir "$dir/data" \
        --log-file "$dir/server.log" --no-rate-limits --pbkdf2-iterations 1000 \
        >"$dir/stdout" 2>"$dir/stderr" &
    SERVER_PID=$!
    local addr="" waited=0
    while [[ -z $addr ]]; do
        if ((waited >= LISTEN_TIMEOUT_SECS * 10)) || ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "callgrind: the server did not start listening; its stderr:" >&2
            tail -20 "$dir/stderr" >&2
            exit 1
        fi
        sleep 0.1
        waited=$((waited + 1))
        addr=$(sed -n 's/^chat-server listening on //p' "$dir/stdout")
    done
    echo "callgrind: $name: $LOAD for ${seconds}s against $addr" >&2
    # shellcheck disable=SC2086 # LOAD is words on purpose
    timeout "$LOAD_TIMEOUT_SECS" "$TARGET/chat-load" --addr "$addr" --progress-secs 0 \
        --json "$dir/result.json" $LOAD --duration-secs "$seconds" >"$dir/load.txt" || {
        echo "callgrind: chat-load failed; its report:" >&2
        cat "$dir/load.txt" >&2
        exit 1
    }
    stop_server
    cp "$(thread_file "$dir" 'server::event_loop::Server::run')" "$dir/loop.out"
    cp "$(thread_file "$dir" 'server::storage::run')" "$dir/storage.out"
    [[ -n $KEEP ]] && mkdir -p "$KEEP/$name" && cp "$dir"/callgrind.out.* "$dir/result.json" "$KEEP/$name/"
    return 0
}

run short "$SHORT_SECS"
run long "$LONG_SECS"

for name in short long; do
    for thread in loop storage; do
        callgrind_annotate --threshold=100 --inclusive=no "$WORK/$name/$thread.out" \
            >"$WORK/$name/$thread.self.txt" 2>"$WORK/annotate.err"
    done
    # (callgrind_annotate 3.19 warns "uninitialized value" on these files;
    # the tables are whole, so its stderr is dropped.)
    callgrind_annotate --threshold=100 --inclusive=yes "$WORK/$name/loop.out" \
        >"$WORK/$name/loop.inclusive.txt" 2>"$WORK/annotate.err"
done

COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo '+changes')"
STATUS=0
python3 - "$WORK" "$BASELINE" "$COMMIT" "$LOAD, ${SHORT_SECS}s and ${LONG_SECS}s" \
    "$LOOP_TOLERANCE_PERCENT" "$STORAGE_TOLERANCE_PERCENT" "$UPDATE_BASELINE" <<'PY' || STATUS=$?
import json, os, re, sys
from collections import defaultdict

work, baseline_path, commit, load, loop_tol, storage_tol, update = sys.argv[1:]
tolerances = {"loop": float(loop_tol), "storage": float(storage_tol)}

def result(name):
    r = json.load(open(f"{work}/{name}/result.json"))
    if r["lost"] or r["unanswered"] or r["errors"] or r["acked"] != r["sent"]:
        sys.exit(f"callgrind: the {name} run was not clean: sent {r['sent']}, acked "
                 f"{r['acked']}, lost {r['lost']}, unanswered {r['unanswered']}, errors {r['errors']}")
    return r

def totals(path):
    with open(path) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    sys.exit(f"callgrind: no totals in {path}")

# callgrind_annotate prints "1,234 (5.6%)  file:function [object]"; a function
# whose inlined code comes from several files has one line per file. Self
# costs of those lines add up; inclusive ones overlap (each can hold the
# function's whole inclusive cost), so the largest is taken.
LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(?:\S*?):(.*?)(?: \[[^\]]*\])?$")
def by_function(path, inclusive):
    costs = defaultdict(int)
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if m and "PROGRAM TOTALS" not in line:
                name, cost = m.group(2), int(m.group(1).replace(",", ""))
                costs[name] = max(costs[name], cost) if inclusive else costs[name] + cost
    return costs

short, long_ = result("short"), result("long")
messages = long_["acked"] - short["acked"]
print(f"load: chat-load {load}; acked {short['acked']:,} and {long_['acked']:,}, "
      f"difference {messages:,} messages")
print(f"commit: {commit}\n")
print(f"{'thread':<10}{'Ir short':>16}{'Ir long':>16}{'Ir/message':>12}")
measured = {}
for thread in ("loop", "storage"):
    a, b = totals(f"{work}/short/{thread}.out"), totals(f"{work}/long/{thread}.out")
    measured[thread] = (b - a) / messages
    print(f"{thread:<10}{a:>16,}{b:>16,}{measured[thread]:>12,.0f}")

def top(thread, kind, count):
    a = by_function(f"{work}/short/{thread}.{kind}.txt", kind == "inclusive")
    b = by_function(f"{work}/long/{thread}.{kind}.txt", kind == "inclusive")
    diff = {name: (b.get(name, 0) - a.get(name, 0)) / messages for name in set(a) | set(b)}
    # Inclusively, main and the frames above it hold everything: start
    # below the loop's own run function.
    diff = {name: cost for name, cost in diff.items()
            if kind == "self" or cost < 0.99 * measured[thread] or name.endswith("Server::run")}
    print(f"\n{thread} thread, top {count} functions by {kind} instructions per message:")
    for name, cost in sorted(diff.items(), key=lambda kv: -kv[1])[:count]:
        share = 100 * cost / measured[thread]
        print(f"{cost:>10,.0f} {share:5.1f}%  {name[:150]}")
top("loop", "self", 15)
top("loop", "inclusive", 15)
top("storage", "self", 10)

def read_baseline():
    values = {}
    if os.path.exists(baseline_path):
        for line in open(baseline_path):
            if "=" in line and not line.startswith("#"):
                key, value = line.strip().split("=", 1)
                values[key] = value
    return values

if update:
    with open(baseline_path, "w") as f:
        f.write("# Instructions per acked message of chat-server's threads, measured by\n"
                "# scripts/callgrind.sh (rewrite with scripts/callgrind.sh --update-baseline).\n")
        f.write(f"commit={commit}\nload={load}\n")
        for thread in ("loop", "storage"):
            f.write(f"{thread}={measured[thread]:.0f}\n")
    print(f"\nbaseline: wrote {baseline_path}")
    sys.exit(0)

baseline = read_baseline()
if not baseline:
    sys.exit(f"callgrind: no baseline {baseline_path}; make one with --update-baseline")
print(f"\nbaseline ({baseline_path}, commit {baseline.get('commit', '?')}):")
if baseline.get("load") != load:
    sys.exit(f"callgrind: the baseline was measured with another load ({baseline.get('load')}); "
             "rerun with --update-baseline")
failed = False
for thread in ("loop", "storage"):
    base = float(baseline[thread])
    change = 100 * (measured[thread] - base) / base
    verdict = "ok"
    if change > tolerances[thread]:
        verdict, failed = "REGRESSION", True
    elif change < -tolerances[thread]:
        verdict = "better (consider --update-baseline)"
    print(f"{thread:<10}{base:>12,.0f} -> {measured[thread]:>10,.0f}  {change:+6.1f}% "
          f"(tolerance +{tolerances[thread]:g}%)  {verdict}")
sys.exit(1 if failed else 0)
PY
exit "$STATUS"
