#!/usr/bin/env bash
# Shared helpers for flowcast's scripts. Source it, do not run it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Functions whose failure leaves nothing sensible to do (ensure_*) exit 1;
# the others return non-zero so that the caller decides.

# Messages go to stderr so that stdout stays usable for the callers' output.
log_info() { printf '[flowcast] %s\n' "$*" >&2; }
log_error() { printf '[flowcast] error: %s\n' "$*" >&2; }

# Runs a command as root: directly when we are root, through sudo otherwise.
# Returns 127 when neither is possible.
_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        return 127
    fi
}

# _apt_install WHAT HOW PACKAGE...: installs Debian packages with apt-get, as
# root or through sudo; exits 1 saying WHAT is missing and HOW to get it when
# that is impossible.
_apt_install() {
    local what="$1" how="$2"
    shift 2
    if ! command -v apt-get >/dev/null 2>&1; then
        log_error "${what} not found on PATH and apt-get is not available: ${how}"
        exit 1
    fi
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
        log_error "${what} not found on PATH; installing needs root and sudo is not available: ${how}"
        exit 1
    fi
    log_info "${what} not found; installing $* with apt-get"
    if ! _as_root env DEBIAN_FRONTEND=noninteractive apt-get update \
        || ! _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; then
        log_error "apt-get could not install $*: ${how}"
        exit 1
    fi
}

# ensure_worker_runtimes: makes sure python3 (3.9+) and node (18+) are on
# PATH: the worker libraries' tests and the integration tests that run real
# workers need them. Installs Debian's python3 / nodejs with apt-get when
# missing; exits 1 when that is impossible or node is too old.
ensure_worker_runtimes() {
    local missing=()
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    if [ "${#missing[@]}" -gt 0 ]; then
        _apt_install "${missing[*]}" "install Python 3.9+ and Node 18+ and run this again" "${missing[@]}"
        hash -r
    fi
    if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)'; then
        log_error "node $(node --version) is too old: the JavaScript worker library needs Node 18+"
        exit 1
    fi
}

# ensure_redis_installed: makes sure redis-server and redis-cli are on PATH.
# Installs the Debian/Ubuntu package redis-server (which pulls in redis-tools,
# the package of redis-cli) with apt-get, as root or through sudo. Exits 1 with
# a message saying what to install when that is impossible.
#
# The package may try to start a Redis service on install; nothing here relies
# on that (there may be no systemd): callers start their own Redis.
ensure_redis_installed() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return 0
    fi
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-cli)
    local how="install Redis (Debian/Ubuntu: 'apt-get install redis-server', which provides redis-server and redis-cli; macOS: 'brew install redis') and run this again"

    _apt_install "${missing[*]}" "$how" redis-server
    hash -r
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        log_error "redis-server and redis-cli are still not on PATH after installing: ${how}"
        exit 1
    fi
    log_info "installed $(redis-server --version | head -n 1)"
}

# redis_cli_url URL ARGS...: redis-cli -u URL ARGS..., quietly, within 5 s
# (an unroutable host must not hang the caller).
redis_cli_url() {
    local url="$1"
    shift
    # redis-cli 7.0 sends AUTH "" pw for redis://:pw@host where clients send
    # AUTH pw: spell out the user they mean.
    if [[ "$url" == *://:*@* ]]; then
        url="${url%%://*}://default${url#*://}"
    fi
    local -a guard=()
    command -v timeout >/dev/null 2>&1 && guard=(timeout 5)
    ${guard[@]+"${guard[@]}"} redis-cli --no-auth-warning -u "$url" "$@" 2>/dev/null
}

# redis_ping URL: succeeds when a Redis answers PONG at URL
# (redis://[user:password@]host[:port][/db], as redis-cli -u takes it).
redis_ping() {
    local reply
    reply="$(redis_cli_url "$1" ping)" || return 1
    [ "$reply" = "PONG" ]
}

# redis_url_host URL / redis_url_port URL: the host (without IPv6 brackets)
# and the port (6379 when absent) of a redis:// or rediss:// URL.
_redis_url_authority() {
    local rest="${1#*://}"  # drop the scheme
    rest="${rest%%/*}"      # drop /db and anything after it
    rest="${rest%%\?*}"     # drop ?query
    rest="${rest##*@}"      # drop user:password@
    printf '%s' "$rest"
}
redis_url_host() {
    local auth
    auth="$(_redis_url_authority "$1")"
    if [[ "$auth" == \[* ]]; then # [::1]:6379
        auth="${auth#\[}"
        printf '%s\n' "${auth%%\]*}"
    else
        printf '%s\n' "${auth%%:*}"
    fi
}
redis_url_port() {
    local auth port=""
    auth="$(_redis_url_authority "$1")"
    if [[ "$auth" == \[* ]]; then
        [[ "$auth" == *\]:* ]] && port="${auth##*\]:}"
    elif [[ "$auth" == *:* ]]; then
        port="${auth##*:}"
    fi
    printf '%s\n' "${port:-6379}"
}

# redis_url_is_local URL: succeeds when the URL's host is this machine's
# loopback (127.0.0.1 or localhost), where start_local_redis can serve it.
redis_url_is_local() {
    case "$(redis_url_host "$1")" in
        127.0.0.1 | localhost) return 0 ;;
        *) return 1 ;;
    esac
}

# start_local_redis PORT DATADIR [EXTRA_REDIS_SERVER_ARGS...]
# Starts a daemonized redis-server on 127.0.0.1:PORT with AOF persistence
# (appendfsync everysec, no RDB snapshots), its files under DATADIR (created
# if needed): the AOF, redis.pid and redis.log. Waits until it answers PING,
# at most ~10 s. Returns 1 (after showing the end of its log) if it does not.
# The server outlives the caller; stop it with: redis-cli -p PORT shutdown
start_local_redis() {
    local port="$1" datadir="$2"
    shift 2
    if [ -z "$port" ] || [ -z "$datadir" ]; then
        log_error "usage: start_local_redis PORT DATADIR [extra redis-server args...]"
        return 2
    fi
    mkdir -p "$datadir" || return 1
    datadir="$(cd "$datadir" && pwd)" || return 1 # redis-server wants absolute paths

    local reply
    reply="$(redis-cli -h 127.0.0.1 -p "$port" ping 2>&1)" || true
    case "$reply" in
        PONG | *NOAUTH*)
            log_info "a Redis already answers on 127.0.0.1:${port}; not starting another"
            return 0
            ;;
    esac

    log_info "starting redis-server on 127.0.0.1:${port} (AOF, data in ${datadir})"
    if ! redis-server \
        --bind 127.0.0.1 \
        --port "$port" \
        --appendonly yes \
        --appendfsync everysec \
        --dir "$datadir" \
        --save '' \
        --daemonize yes \
        --pidfile "$datadir/redis.pid" \
        --logfile "$datadir/redis.log" \
        "$@"; then
        log_error "redis-server failed to start; see ${datadir}/redis.log"
        [ -f "$datadir/redis.log" ] && tail -n 20 "$datadir/redis.log" >&2
        return 1
    fi

    for _ in $(seq 1 100); do
        # PING answers PONG without auth too; an auth error still means it is up.
        reply="$(redis-cli -h 127.0.0.1 -p "$port" ping 2>&1)" || true
        case "$reply" in
            PONG | *NOAUTH*)
                log_info "redis-server is up on 127.0.0.1:${port} (pid $(cat "$datadir/redis.pid" 2>/dev/null || echo '?'))"
                return 0
                ;;
        esac
        sleep 0.1
    done
    log_error "redis-server did not answer PING on 127.0.0.1:${port} within 10 s; end of ${datadir}/redis.log:"
    [ -f "$datadir/redis.log" ] && tail -n 20 "$datadir/redis.log" >&2
    return 1
}

# ensure_chromium_installed: makes sure headless Chromium and its WebDriver
# (chromium, chromedriver) are on PATH, for the dashboard's browser tests:
# installs Debian's chromium and chromium-driver with apt-get when missing.
# Exits 1 when that is impossible (no network, no apt-get): those tests must
# fail loudly, never pass without a browser.
ensure_chromium_installed() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        return 0
    fi
    _apt_install "chromium/chromedriver" \
        "install Chromium and its WebDriver (Debian/Ubuntu: 'apt-get install chromium chromium-driver') and run this again" \
        chromium chromium-driver
    hash -r
    if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        log_error "chromium and chromedriver are still not on PATH after installing"
        exit 1
    fi
    log_info "installed $(chromium --version 2>/dev/null | head -n 1)"
}

# ensure_cargo: makes sure cargo is on PATH (picking up ~/.cargo/bin when a
# rustup install has not been added to PATH yet); exits 1 otherwise.
ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
        PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
        export PATH
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        log_error "cargo not found on PATH: install the Rust toolchain (https://rustup.rs: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh), then run this again"
        exit 1
    fi
}
