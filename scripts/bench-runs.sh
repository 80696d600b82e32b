#!/usr/bin/env bash
# Runner benchmarks of docs/BENCHMARKS.md: `flowcast serve --role all` on a
# throw-away Redis (AOF, appendfsync everysec), runs posted over REST and
# followed on WebSocket, plus the Redis ceiling of the commit script measured
# in the same invocation.
#
#   scripts/bench-runs.sh wide|seed|transform|fair
#
#   wide: node completions/s with a wide fan-out of delay 0 (WIDTH, default
#         100), CONCURRENCY runs in flight (default 8)
#   seed: the seed's flight-search, one run at a time (idle): POST →
#         workflow_started / workflow_completed at the socket
#   transform: examples/bench/transform-heavy.json (18 jq transforms a run,
#         each in the sandboxed evaluators), CONCURRENCY runs in flight
#         workflow_started at the socket
#   fair: a small user's seed runs (flight-search, one at a time) alone, then
#         again while another user floods wide transform runs (WIDTH nodes
#         running FILTER, CONCURRENCY runs in flight): compare the two
#         lines' post_to_completed_us p50/p99 (labels seed-alone and
#         seed-under-flood; the flood's own line is labelled flood)
# JSON lines go to $BENCH_DIR/results.jsonl. Needs `cargo build --release` and
# redis-server (installed with apt-get when missing, see bench-lib.sh); env:
# DURATION (default 20 s), RUNS, for wide WIDTH, CONCURRENCY, USERS, and for
# fair WIDTH (default 100), CONCURRENCY (default 16), FILTER (default
# `[range(100000)] | add`).

# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

SCENARIO="${1:?usage: $0 wide|seed|transform|fair}"
bench_start_redis
bench_start_flowcast all
bench_wait_port "$API_PORT"

target=(--api "http://127.0.0.1:$API_PORT" --ws-url "ws://127.0.0.1:$WS_PORT/ws?username={user}"
    --redis-url "$REDIS_URL" --pid "$FLOWCAST_PID")
common=("${target[@]}" --user-prefix "r${RANDOM}u")
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
    fair)
        d="${DURATION:-20}"
        seed=(--tag flight-search --concurrency 1 --users 1 --runs "${RUNS:-100000}"
            --ceiling-secs 0 -d "$d")
        bench_run runs "${target[@]}" --user-prefix "s${RANDOM}u" --label seed-alone "${seed[@]}"
        # The flood outlasts the measured seed runs on both sides.
        bench_run runs "${target[@]}" --user-prefix "f${RANDOM}u" --label flood \
            --wide "${WIDTH:-100}" --wide-filter "${FILTER:-[range(100000)] | add}" \
            --concurrency "${CONCURRENCY:-16}" --users 1 --runs 10000000 --ceiling-secs 0 \
            -d "$((d + 10))" --drain-ms 2000 &
        flood=$!
        sleep 5
        bench_run runs "${target[@]}" --user-prefix "s${RANDOM}u" --label seed-under-flood "${seed[@]}"
        wait "$flood";;
    *) bench_log "unknown scenario $SCENARIO"; exit 2;;
esac
