#!/usr/bin/env bash
# Runner benchmarks of docs/BENCHMARKS.md: `flowcast serve --role all` on a
# throw-away Redis (AOF, appendfsync everysec), runs posted over REST and
# followed on WebSocket, plus the Redis ceiling of the commit script measured
# in the same invocation.
#
#   scripts/bench-runs.sh wide|seed|transform|fair|foreach|children
#
#   wide: node completions/s with a wide fan-out of delay 0 (WIDTH, default
#         100), CONCURRENCY runs in flight (default 8)
#   seed: the seed's flight-search, one run at a time (idle): POST →
#         workflow_started / workflow_completed at the socket
#   transform: examples/bench/transform-heavy.json (18 jq transforms a run,
#         each in the sandboxed evaluators), CONCURRENCY runs in flight
#   fair: a small user's seed runs (flight-search, one at a time) alone, then
#         again while another user floods wide transform runs (WIDTH nodes
#         running FILTER, CONCURRENCY runs in flight): compare the two
#         lines' post_to_completed_us p50/p99 (labels seed-alone and
#         seed-under-flood; the flood's own line is labelled flood)
#   foreach: items/s of one delay-0 node over ITEMS items (default 10000),
#         ITEM_CONCURRENCY at a time (default 64), CONCURRENCY runs in
#         flight (default 4): compare with `WIDTH=$ITEMS ... wide`
#   children: child runs/s of a workflow node over ITEMS items (default
#         1000), one child run per item: compare with `WIDTH=$ITEMS ... wide`
# JSON lines go to $BENCH_DIR/results.jsonl. Needs `cargo build --release` and
# redis-server (installed with apt-get when missing, see bench-lib.sh); env:
# DURATION (default 20 s), RUNS, USERS, and WIDTH, ITEMS, CONCURRENCY,
# ITEM_CONCURRENCY as above; for fair WIDTH (default 100), CONCURRENCY
# (default 16), FILTER (default `[range(100000)] | add`); NODE_STARTED=1 makes
# the generated workflow ask for node_started events (wide, foreach,
# children).

# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

SCENARIO="${1:?usage: $0 wide|seed|transform|fair|foreach|children}"
bench_start_redis
# Room for WIDTH=10000 (10,002 nodes), the static twin of a 10,000-item foreach.
bench_start_flowcast all --max-nodes 20000
bench_wait_port "$API_PORT"

target=(--api "http://127.0.0.1:$API_PORT" --ws-url "ws://127.0.0.1:$WS_PORT/ws?username={user}"
    --redis-url "$REDIS_URL" --pid "$FLOWCAST_PID")
common=("${target[@]}" --user-prefix "r${RANDOM}u")
started=()
suffix=""
if [ "${NODE_STARTED:-0}" = 1 ]; then started=(--node-started); suffix="-started"; fi
case "$SCENARIO" in
    wide)
        bench_run runs "${common[@]}" "${started[@]}" --label "wide-${WIDTH:-100}$suffix" \
            --wide "${WIDTH:-100}" --concurrency "${CONCURRENCY:-8}" --users "${USERS:-4}" \
            --runs "${RUNS:-100000}" -d "${DURATION:-20}";;
    foreach|children)
        kind=(--foreach); [ "$SCENARIO" = children ] && kind=(--foreach-children)
        items="${ITEMS:-$([ "$SCENARIO" = children ] && echo 1000 || echo 10000)}"
        bench_run runs "${common[@]}" "${started[@]}" --label "$SCENARIO-$items$suffix" \
            "${kind[@]}" "$items" --item-concurrency "${ITEM_CONCURRENCY:-64}" \
            --concurrency "${CONCURRENCY:-4}" --users "${USERS:-4}" --runs "${RUNS:-100000}" \
            -d "${DURATION:-20}" --drain-ms 60000;;
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
