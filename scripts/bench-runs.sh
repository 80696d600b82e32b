#!/usr/bin/env bash
# Runner benchmarks of docs/BENCHMARKS.md: `flowcast serve --role all` on a
# throw-away Redis (AOF, appendfsync everysec), runs posted over REST and
# followed on WebSocket, plus the Redis ceiling of the commit script measured
# in the same invocation.
#
#   scripts/bench-runs.sh wide|seed|transform
#
#   wide: node completions/s with a wide fan-out of delay 0 (WIDTH, default
#         100), CONCURRENCY runs in flight (default 8)
#   seed: the seed's flight-search, one run at a time (idle): POST →
#         workflow_started / workflow_completed at the socket
#   transform: examples/bench/transform-heavy.json (18 jq transforms a run,
#         each in the sandboxed evaluators), CONCURRENCY runs in flight
# JSON lines go to $BENCH_DIR/results.jsonl. Needs `cargo build --release` and
# redis-server (installed with apt-get when missing, see bench-lib.sh); env:
# DURATION (default 20 s), RUNS, and for wide WIDTH, CONCURRENCY, USERS.

# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

SCENARIO="${1:?usage: $0 wide|seed|transform}"
bench_start_redis
bench_start_flowcast all
bench_wait_port "$API_PORT"

common=(--api "http://127.0.0.1:$API_PORT" --ws-url "ws://127.0.0.1:$WS_PORT/ws?username={user}"
    --redis-url "$REDIS_URL" --pid "$FLOWCAST_PID" --user-prefix "r${RANDOM}u")
case "$SCENARIO" in
    wide)
        bench_run runs "${common[@]}" --label "wide-${WIDTH:-100}" --wide "${WIDTH:-100}" \
            --concurrency "${CONCURRENCY:-8}" --users "${USERS:-4}" --runs "${RUNS:-100000}" \
            -d "${DURATION:-20}";;
    seed)
        bench_run runs "${common[@]}" --label seed-idle --tag flight-search \
            --concurrency 1 --runs "${RUNS:-1000}" -d "${DURATION:-20}";;
    transform)
        bench_run runs "${common[@]}" --label transform-heavy \
            --workflow "$(dirname "$0")/../examples/bench/transform-heavy.json" \
            --concurrency "${CONCURRENCY:-8}" --users "${USERS:-4}" --runs "${RUNS:-100000}" \
            -d "${DURATION:-20}";;
    *) bench_log "unknown scenario $SCENARIO"; exit 2;;
esac
