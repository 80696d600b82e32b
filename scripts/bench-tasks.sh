#!/usr/bin/env bash
# Task-node benchmark of docs/BENCHMARKS.md: `flowcast serve --role all` on a
# throw-away Redis; runs of `start -> WIDTH x task -> end` worked by WORKERS
# threads of the Python worker library (scripts/bench-tasks.py): task
# completions/s and claim -> complete latency. Then the same shape with
# `transform` nodes, followed on WebSocket by `flowcast bench runs` (the
# in-daemon ceiling of the same workflow).
#
#   scripts/bench-tasks.sh
#
# JSON lines go to $BENCH_DIR/results.jsonl. Needs `cargo build --release`,
# python3 and redis-server; env: WORKERS (8), WIDTH (20), CONCURRENCY (16),
# BATCH (8), DURATION (20 s).

# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

bench_start_redis
bench_start_flowcast all
bench_wait_port "$API_PORT"

WIDTH="${WIDTH:-20}"
bench_log "tasks: $WIDTH task nodes a run, ${WORKERS:-8} Python workers"
line="$(timeout 900 python3 "$ROOT/scripts/bench-tasks.py" --api "http://127.0.0.1:$API_PORT" \
    --workers "${WORKERS:-8}" --width "$WIDTH" --concurrency "${CONCURRENCY:-16}" \
    --batch "${BATCH:-8}" --duration "${DURATION:-20}" --label "tasks-${WIDTH}")"
printf '%s\n' "$line" >>"$RESULTS"
printf '%s\n' "$line"

# The same shape, in the daemon.
wf="$BENCH_DIR/transform-${WIDTH}.json"
python3 - "$WIDTH" >"$wf" <<'PY'
import json, sys
w = int(sys.argv[1])
mids = [f"t{i}" for i in range(w)]
nodes = [{"id": "start", "kind": "delay", "ms": 0}]
nodes += [{"id": m, "kind": "transform", "filter": "{ok: true}", "depends_on": ["start"]} for m in mids]
nodes.append({"id": "end", "kind": "delay", "ms": 0, "depends_on": mids})
print(json.dumps({"tag": f"bench-transform-{w}", "nodes": nodes}))
PY
bench_log "transform: the same $WIDTH nodes as jq transforms"
bench_run runs --api "http://127.0.0.1:$API_PORT" --ws-url "ws://127.0.0.1:$WS_PORT/ws?username={user}" \
    --redis-url "$REDIS_URL" --pid "$FLOWCAST_PID" --user-prefix "t${RANDOM}u" \
    --label "transform-${WIDTH}" --workflow "$wf" --concurrency "${CONCURRENCY:-16}" \
    --users 1 --runs 1000000 -d "${DURATION:-20}"
