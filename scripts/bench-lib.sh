#!/usr/bin/env bash
# Helpers shared by scripts/bench-*.sh: start and stop the servers a benchmark
# measures (a throw-away Redis, flowcast, nchan), all on loopback, data under
# $BENCH_DIR. Every process started here is recorded and stopped on exit by
# its pid (never by name).
#
# Source it; then call bench_start_redis, bench_start_flowcast ROLE [ARGS],
# bench_start_nchan, and bench_stop_all (also run by the EXIT trap).
#
# Needs: target/release/flowcast (`cargo build --release`), redis-server, and
# for the nchan targets nginx with Debian's libnginx-mod-nchan. redis-server,
# nginx and the module are installed with apt-get when missing (as root or
# through sudo), like scripts/lib.sh does for Redis. Installing the nginx
# package may start a system nginx on :80; the benchmarks neither use nor stop
# it (theirs is a separate nginx with its own prefix under $BENCH_DIR).
#
# Env: FLOWCAST (the server binary, default target/release/flowcast),
# BENCH_CLIENT (the binary that runs `flowcast bench`, default $FLOWCAST: set
# it to compare two server builds with the same client), BENCH_DIR, RESULTS,
# REDIS_PORT, API_PORT, WS_PORT, NCHAN_REDIS_PORT, NCHAN_MEM_PORT, WORKFLOWS_DIR
# (the daemon's --workflows-dir, default examples/workflows).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
BENCH_DIR="${BENCH_DIR:-/tmp/flowcast-bench}"
REDIS_PORT="${REDIS_PORT:-6400}"
REDIS_URL="redis://127.0.0.1:${REDIS_PORT}"
API_PORT="${API_PORT:-18081}"
WS_PORT="${WS_PORT:-18084}"
NCHAN_REDIS_PORT="${NCHAN_REDIS_PORT:-18090}"
NCHAN_MEM_PORT="${NCHAN_MEM_PORT:-18091}"
FLOWCAST="${FLOWCAST:-$ROOT/target/release/flowcast}"
BENCH_CLIENT="${BENCH_CLIENT:-$FLOWCAST}"
NCHAN_MODULE="${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}"
RESULTS="${RESULTS:-$BENCH_DIR/results.jsonl}"
BENCH_PIDS=()

mkdir -p "$BENCH_DIR"

for bin in "$FLOWCAST" "$BENCH_CLIENT"; do
    if [ ! -x "$bin" ]; then
        log_error "$bin not found: run 'cargo build --release' first"
        exit 1
    fi
done

bench_log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

# Waits until TCP port $1 on 127.0.0.1 accepts connections (at most 10 s).
bench_wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    bench_log "port $1 did not open"; return 1
}

# Makes sure nginx and the nchan module (Debian: nginx, libnginx-mod-nchan)
# are installed, installing them with apt-get when not; exits 1 otherwise.
ensure_nchan_installed() {
    if command -v nginx >/dev/null 2>&1 && [ -f "$NCHAN_MODULE" ]; then return 0; fi
    local how="install nginx and nchan (Debian/Ubuntu: 'apt-get install nginx libnginx-mod-nchan'; the module must be at $NCHAN_MODULE, or set NCHAN_MODULE) and run this again"
    if ! command -v apt-get >/dev/null 2>&1; then
        log_error "nginx or the nchan module not found and apt-get is not available: $how"
        exit 1
    fi
    log_info "nginx or the nchan module not found; installing nginx and libnginx-mod-nchan with apt-get"
    if ! _as_root env DEBIAN_FRONTEND=noninteractive apt-get update \
        || ! _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx libnginx-mod-nchan; then
        log_error "apt-get could not install nginx libnginx-mod-nchan: $how"
        exit 1
    fi
    hash -r
    if ! command -v nginx >/dev/null 2>&1 || [ ! -f "$NCHAN_MODULE" ]; then
        log_error "nginx or $NCHAN_MODULE still missing after installing: $how"
        exit 1
    fi
}

# A fresh Redis on $REDIS_PORT with AOF (appendfsync everysec), data in $BENCH_DIR/redis.
bench_start_redis() {
    ensure_redis_installed
    rm -rf "$BENCH_DIR/redis"; mkdir -p "$BENCH_DIR/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$BENCH_DIR/redis" \
        --appendonly yes --appendfsync everysec --save '' --daemonize no \
        --logfile "$BENCH_DIR/redis/redis.log" &
    REDIS_PID=$!; BENCH_PIDS+=("$REDIS_PID")
    bench_wait_port "$REDIS_PORT"
    bench_log "redis pid $REDIS_PID on $REDIS_PORT"
}

# flowcast serve --role $1 with the rest as extra flags; sets FLOWCAST_PID.
# The per-user limits are lifted: the benchmarks put thousands of sockets and
# hundreds of runs per second on one user, which is what they measure, not
# what a tenant may do (the defaults are 100 sessions, 1,000 active runs and
# 100 runs/s per user).
# An older build (FLOWCAST=..., for a before/after comparison in one run)
# gets only the flags it knows.
bench_start_flowcast() {
    local role="$1"; shift
    local limits=(--max-sessions-per-user 1000000)
    if "$FLOWCAST" serve --help | grep -q -- --max-active-runs-per-user; then
        limits+=(--max-active-runs-per-user 1000000 --max-runs-per-sec-per-user 1000000)
    fi
    RUST_LOG="${RUST_LOG:-warn}" "$FLOWCAST" serve --role "$role" --redis-url "$REDIS_URL" \
        --api-addr "127.0.0.1:$API_PORT" --ws-addr "127.0.0.1:$WS_PORT" --workflows-dir "${WORKFLOWS_DIR:-$ROOT/examples/workflows}" \
        "${limits[@]}" "$@" >>"$BENCH_DIR/flowcast.log" 2>&1 &
    FLOWCAST_PID=$!; BENCH_PIDS+=("$FLOWCAST_PID")
    bench_wait_port "$WS_PORT"
    bench_log "flowcast ($role) pid $FLOWCAST_PID"
}

# nginx + nchan from scripts/nchan/nchan.conf, prefix $BENCH_DIR/nchan; sets
# NCHAN_PIDS (master and workers, for --pid).
bench_start_nchan() {
    ensure_nchan_installed
    local p="$BENCH_DIR/nchan"
    rm -rf "$p"; mkdir -p "$p/tmp"
    sed -e "s/REDIS_PORT/$REDIS_PORT/" -e "s/127.0.0.1:8090/127.0.0.1:$NCHAN_REDIS_PORT/" \
        -e "s/127.0.0.1:8091/127.0.0.1:$NCHAN_MEM_PORT/" -e "s|/usr/lib/nginx/modules/ngx_nchan_module.so|$NCHAN_MODULE|" \
        "$ROOT/scripts/nchan/nchan.conf" >"$p/nchan.conf"
    nginx -p "$p/" -c "$p/nchan.conf" -e "$p/error.log" &
    NCHAN_MASTER=$!; BENCH_PIDS+=("$NCHAN_MASTER")
    bench_wait_port "$NCHAN_REDIS_PORT"; bench_wait_port "$NCHAN_MEM_PORT"
    sleep 0.5
    local workers
    mapfile -t workers < <(pgrep -P "$NCHAN_MASTER")
    NCHAN_PIDS=("$NCHAN_MASTER" "${workers[@]}")
    bench_log "nchan master $NCHAN_MASTER, workers ${NCHAN_PIDS[*]:1}"
}

# --pid flags for a list of pids.
bench_pid_flags() { local p; for p in "$@"; do printf -- '--pid %s ' "$p"; done; }

# Runs `flowcast bench ...` ($BENCH_CLIENT), appends its JSON line to $RESULTS, echoes it.
bench_run() {
    local line
    line="$(timeout 900 "$BENCH_CLIENT" bench "$@")"
    printf '%s\n' "$line" >>"$RESULTS"
    printf '%s\n' "$line"
}

# Stops one process by pid and waits for it (TERM, then KILL after 10 s).
bench_stop() {
    local pid="$1"
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

bench_stop_all() {
    local i
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do bench_stop "${BENCH_PIDS[$i]}"; done
    BENCH_PIDS=()
}

trap bench_stop_all EXIT
