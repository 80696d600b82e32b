#!/usr/bin/env bash
# Brings a fresh machine to a running flowcast daemon:
#   1. makes sure a Redis answers at FLOWCAST_REDIS_URL (default
#      redis://127.0.0.1:6379); when none does and the URL is on loopback,
#      installs redis-server if needed and starts one with AOF persistence,
#      its data under <repo>/data/redis (it keeps running after the daemon
#      exits; stop it with: redis-cli -p PORT shutdown);
#   2. builds the release binary (cargo build --release --bin flowcast);
#   3. execs `flowcast serve --workflows-dir examples/workflows "$@"` with
#      RUST_LOG defaulting to info.
# Extra arguments go to `flowcast serve`, e.g. scripts/start.sh --role fanout
# Works from any directory.
set -euo pipefail

# CARGO_TARGET_DIR may be relative to the caller's directory: pin it first.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    mkdir -p "$CARGO_TARGET_DIR"
    CARGO_TARGET_DIR="$(cd "$CARGO_TARGET_DIR" && pwd)"
    export CARGO_TARGET_DIR
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

# The Redis the daemon will use: --redis-url in the arguments wins over the
# environment, as it does in the daemon itself.
REDIS_URL="${FLOWCAST_REDIS_URL:-redis://127.0.0.1:6379}"
want_workflows_dir=1
[ -n "${FLOWCAST_WORKFLOWS_DIR:-}" ] && want_workflows_dir=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --redis-url) REDIS_URL="${args[$((i + 1))]:-$REDIS_URL}" ;;
        --redis-url=*) REDIS_URL="${args[$i]#--redis-url=}" ;;
        --workflows-dir | --workflows-dir=*) want_workflows_dir=0 ;;
    esac
done

# 1. Redis.
REDIS_AT="$(redis_url_host "$REDIS_URL"):$(redis_url_port "$REDIS_URL")"
if ! command -v redis-cli >/dev/null 2>&1 && ! redis_url_is_local "$REDIS_URL"; then
    # No redis-cli to PING with, and nothing to install it for: a TCP check.
    # shellcheck disable=SC2016 # $1 and $2 expand in the inner bash
    if timeout 5 bash -c ': >"/dev/tcp/$1/$2"' _ "$(redis_url_host "$REDIS_URL")" "$(redis_url_port "$REDIS_URL")" 2>/dev/null; then
        log_info "redis-cli is not installed; ${REDIS_AT} accepts connections, assuming it is the Redis"
    else
        log_error "the Redis at ${REDIS_AT} (FLOWCAST_REDIS_URL / --redis-url) is unreachable; this script only starts a Redis on 127.0.0.1/localhost. Start that Redis or point FLOWCAST_REDIS_URL at a reachable one."
        exit 1
    fi
elif command -v redis-cli >/dev/null 2>&1 && redis_ping "$REDIS_URL"; then
    log_info "Redis answers at ${REDIS_AT}"
else
    if ! redis_url_is_local "$REDIS_URL"; then
        log_error "the Redis at ${REDIS_AT} (FLOWCAST_REDIS_URL / --redis-url) is unreachable; this script only starts a Redis on 127.0.0.1/localhost. Start that Redis or point FLOWCAST_REDIS_URL at a reachable one."
        exit 1
    fi
    ensure_redis_installed
    port="$(redis_url_port "$REDIS_URL")"
    if redis_ping "$REDIS_URL"; then
        # Some environments start the packaged service on install.
        log_info "a Redis now answers on 127.0.0.1:${port} (started by the redis-server package?); using it as it is"
    else
        extra=()
        # A password in the URL: make our Redis require it, so AUTH works.
        userinfo="${REDIS_URL#*://}"
        userinfo="${userinfo%%/*}"
        if [[ "$userinfo" == *@* ]]; then
            userinfo="${userinfo%@*}"
            if [[ "$userinfo" == *:* ]] && [ -n "${userinfo#*:}" ]; then
                extra+=(--requirepass "${userinfo#*:}")
            fi
        fi
        start_local_redis "$port" "$ROOT/data/redis" "${extra[@]+"${extra[@]}"}"
        if ! redis_ping "$REDIS_URL"; then
            log_error "a Redis runs on 127.0.0.1:${port} but does not answer PING through FLOWCAST_REDIS_URL (wrong credentials or db?); see $ROOT/data/redis/redis.log"
            exit 1
        fi
    fi
fi
if command -v redis-cli >/dev/null 2>&1 \
    && [ "$(redis_cli_url "$REDIS_URL" config get appendonly | tail -n 1)" = "no" ]; then
    log_info "warning: this Redis runs without AOF (appendonly no); accepted work can be lost if it crashes"
fi

# 2. Build.
ensure_cargo
log_info "building the release binary (cargo build --release --bin flowcast)"
cargo build --release --bin flowcast
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/flowcast"

# 3. Run.
export RUST_LOG="${RUST_LOG:-info}"
export FLOWCAST_REDIS_URL="${FLOWCAST_REDIS_URL:-$REDIS_URL}"
serve_args=()
if [ "$want_workflows_dir" -eq 1 ]; then
    serve_args+=(--workflows-dir examples/workflows)
fi
log_info "exec $BIN serve ${serve_args[*]-} $*"
exec "$BIN" serve "${serve_args[@]+"${serve_args[@]}"}" "$@"
