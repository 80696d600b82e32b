#!/usr/bin/env bash
# Runs every check flowcast has: formatting, clippy, and the whole test suite
# (unit and integration tests, against real Redis servers).
#
# Makes sure redis-server and redis-cli are installed (apt-get when missing;
# CI runs this as root on a clean Debian machine). It does not start a Redis:
# the integration tests start private redis-server processes on free ports,
# using the binary in FLOWCAST_TEST_REDIS_SERVER (exported here).
#
# Extra arguments go to `cargo test`, e.g. scripts/test.sh -- --nocapture
# Works from any directory. Exits non-zero on the first failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

step="setup"
summary=()
on_exit() {
    local status=$?
    if [ "$status" -eq 0 ]; then
        local IFS=,
        printf '\n[flowcast] test.sh: ALL CHECKS PASSED (%s)\n' "${summary[*]}"
    else
        printf '\n[flowcast] test.sh: FAILED during %s (exit %s)\n' "$step" "$status" >&2
    fi
}
trap on_exit EXIT

ensure_cargo
ensure_redis_installed
FLOWCAST_TEST_REDIS_SERVER="$(command -v redis-server)"
export FLOWCAST_TEST_REDIS_SERVER
log_info "redis-server for the tests: ${FLOWCAST_TEST_REDIS_SERVER} ($(redis-server --version | head -n 1))"

step="cargo fmt --all -- --check"
if cargo fmt --version >/dev/null 2>&1; then
    log_info "$step"
    cargo fmt --all -- --check
    summary+=("fmt ok")
else
    log_info "note: rustfmt is not installed, skipping the format check (rustup component add rustfmt)"
    summary+=("fmt SKIPPED")
fi

step="cargo clippy --workspace --all-targets -- -D warnings"
if cargo clippy --version >/dev/null 2>&1; then
    log_info "$step"
    cargo clippy --workspace --all-targets -- -D warnings
    summary+=(" clippy ok")
else
    log_info "note: clippy is not installed, skipping lints (rustup component add clippy)"
    summary+=(" clippy SKIPPED")
fi

step="cargo test --workspace"
log_info "$step $*"
cargo test --workspace "$@"
summary+=(" tests ok")
step="done"
