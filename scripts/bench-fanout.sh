#!/usr/bin/env bash
# Fan-out benchmarks of docs/BENCHMARKS.md: flowcast (`serve --role fanout`)
# against nchan (Redis-backed and in-memory), in one run, on loopback.
#
#   scripts/bench-fanout.sh SCENARIO [TARGETS]
#
# SCENARIO: closed | broadcast | tenants | sweep | idle | reuseport | replay
# TARGETS:  any of flowcast,flowcast-sse,nchan-redis,nchan-mem (default:
#           flowcast,nchan-redis,nchan-mem; reuseport and replay run
#           flowcast only); flowcast-sse is the same server measured through
#           its SSE endpoint instead of WebSockets
# Env: BENCH_DIR (default /tmp/flowcast-bench), REDIS_PORT (6400), DURATION,
#      RATES (sweep), IDLE_CONNS (idle), FANOUT_PROCS and TOTAL_CONNS (reuseport),
#      REPLAY_EVENTS and REPLAY_CONNS (replay).
# Each server is started fresh for its run and stopped after; JSON lines go to
# $BENCH_DIR/results.jsonl. Needs `cargo build --release`, redis-server, and
# nginx + libnginx-mod-nchan for the nchan targets (both installed with
# apt-get when missing, see bench-lib.sh). FLOWCAST / BENCH_CLIENT choose the
# server and client binaries (bench-lib.sh).

# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

SCENARIO="${1:?usage: $0 closed|broadcast|tenants|sweep|idle|reuseport|replay [targets]}"
TARGETS="${2:-flowcast,nchan-redis,nchan-mem}"

bench_start_redis

# Sets URL, PUB (publisher flags), PIDS (--pid flags) for target $1, starting its server.
start_target() {
    case "$1" in
        flowcast)
            bench_start_flowcast fanout
            URL="ws://127.0.0.1:$WS_PORT/ws?username={user}"
            PUB=(--redis-url "$REDIS_URL")
            PIDS="$(bench_pid_flags "$FLOWCAST_PID")";;
        flowcast-sse)
            bench_start_flowcast fanout
            URL="http://127.0.0.1:$WS_PORT/events?username={user}"
            PUB=(--redis-url "$REDIS_URL")
            PIDS="$(bench_pid_flags "$FLOWCAST_PID")";;
        nchan-redis | nchan-mem)
            bench_start_nchan
            local port="$NCHAN_REDIS_PORT"
            [ "$1" = nchan-mem ] && port="$NCHAN_MEM_PORT"
            URL="ws://127.0.0.1:$port/sub/{user}"
            PUB=(--pub-url "http://127.0.0.1:$port/pub/{user}")
            PIDS="$(bench_pid_flags "${NCHAN_PIDS[@]}")";;
        *) bench_log "unknown target $1"; exit 2;;
    esac
}

# Runs `flowcast bench fanout` against target $1 with the remaining flags.
run_target() {
    local target="$1"; shift
    start_target "$target"
    # shellcheck disable=SC2086
    bench_run fanout --url "$URL" "${PUB[@]}" $PIDS --label "$target" \
        --user-prefix "b${RANDOM}u" "$@" || bench_log "$target: bench failed"
    bench_stop_all_but_redis
}

bench_stop_all_but_redis() {
    local keep=() p
    for p in "${BENCH_PIDS[@]}"; do
        if [ "$p" = "$REDIS_PID" ]; then keep+=("$p"); else bench_stop "$p"; fi
    done
    BENCH_PIDS=("${keep[@]}")
    sleep 1
}

# FANOUT_PROCS `serve --role fanout --reuse-port` processes on one port, and as
# many bench shards holding TOTAL_CONNS idle connections between them (each
# process has a 20,000 open-file limit, servers and clients alike).
run_reuseport() {
    local n="${FANOUT_PROCS:-6}" total="${TOTAL_CONNS:-100000}" pids=() i shard_pids=()
    for i in $(seq 1 "$n"); do
        bench_start_flowcast fanout --reuse-port --workers 1
        pids+=("$FLOWCAST_PID")
    done
    local before after
    before="$(ps -o rss= -p "$(IFS=,; echo "${pids[*]}")" | awk '{s+=$1} END {print s}')"
    for i in $(seq 0 $((n - 1))); do
        "$BENCH_CLIENT" bench fanout --url "ws://127.0.0.1:$WS_PORT/ws?username={user}" --rate 0 \
            --users 1000 -c "$total" --shard "$i/$n" --connect-rate 600 --connect-concurrency 64 --settle-ms 2000 \
            -d "${DURATION:-60}" --label "reuseport-$i/$n" >>"$BENCH_DIR/reuseport.jsonl" \
            2>>"$BENCH_DIR/reuseport.log" &
        shard_pids+=($!)
    done
    # Sample once the servers' descriptor count stops growing (every shard connected).
    local open=0 last=-1
    while [ "$open" != "$last" ]; do
        last="$open"; sleep 10
        open="$(for p in "${pids[@]}"; do find "/proc/$p/fd" -mindepth 1 | wc -l; done | paste -sd+ | bc)"
    done
    after="$(ps -o rss= -p "$(IFS=,; echo "${pids[*]}")" | awk '{s+=$1} END {print s}')"
    bench_log "servers: ${pids[*]}; fds open: $open; RSS before ${before} KiB, connected ${after} KiB"
    sleep 5
    for p in "${shard_pids[@]}"; do wait "$p" || true; done
    python3 - "$BENCH_DIR/reuseport.jsonl" "$before" "$after" "$n" <<'PY' | tee -a "$RESULTS"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][-int(sys.argv[4]):]
est = sum(r["established"] for r in rows); failed = sum(r["failed"] for r in rows)
before, after = int(sys.argv[2]), int(sys.argv[3])
print(json.dumps({"bench": "fanout-reuseport", "processes": int(sys.argv[4]), "established": est,
    "failed": failed, "failures": [r["failures"] for r in rows if r["failures"]],
    "rss_before_kib": before, "rss_connected_kib": after,
    "rss_per_conn_bytes": round((after - before) * 1024 / max(est, 1))}))
PY
    bench_stop_all_but_redis
}

for target in ${TARGETS//,/ }; do
    # HTTP publishing (nchan) needs a few connections to reach high rates.
    http_conns=2; [ "${target#flowcast}" = "$target" ] && http_conns="${PUB_CONNS:-8}"
    case "$SCENARIO" in
        closed)     # target 1: 1 user × 1,000 connections, closed-loop publisher
            run_target "$target" --users 1 -c 1000 --window 8 -d "${DURATION:-10}";;
        broadcast)  # target 2: 1 user × 5,000 connections at 10 events/s
            run_target "$target" --users 1 -c 5000 --rate 10 -d "${DURATION:-30}";;
        tenants)    # target 3: 10,000 users × 1 connection at 5,000 events/s
            run_target "$target" --users 10000 -c 10000 --rate 5000 -d "${DURATION:-20}" \
                --pub-conns "$http_conns" --settle-ms 3000;;
        sweep)      # target 3: the highest sustainable rate, 10,000 users × 1 connection
            for rate in ${RATES:-5000 10000 20000 40000 80000}; do
                run_target "$target" --users 10000 -c 10000 --rate "$rate" -d "${DURATION:-10}" \
                    --pub-conns "$http_conns" --settle-ms 3000
            done;;
        idle)       # target 4: idle connections up to the open-file limit, RSS per connection
            run_target "$target" --users "${IDLE_USERS:-1000}" -c "${IDLE_CONNS:-19900}" --rate 0 \
                -d "${DURATION:-10}" --settle-ms 5000;;
        reuseport)  # target 4: 100,000 idle connections, several fan-out processes on one port
            [ "$target" = flowcast ] || continue
            run_reuseport;;
        replay)     # issue 11: server RSS while many clients replay a long history, reading slowly
            [ "$target" = flowcast ] || continue
            bench_start_flowcast fanout
            bench_run replay --url "ws://127.0.0.1:$WS_PORT/ws?username={user}&last_event_id=0" \
                --redis-url "$REDIS_URL" --pid "$FLOWCAST_PID" --label replay \
                -n "${REPLAY_EVENTS:-20000}" -c "${REPLAY_CONNS:-50}" --pad-bytes 4000 \
                --read-batch 100 --read-pause-ms 20 || bench_log "replay: bench failed"
            bench_stop_all_but_redis;;
        *) bench_log "unknown scenario $SCENARIO"; exit 2;;
    esac
done
