#!/usr/bin/env bash
# Runs every check flowcast has: formatting, clippy, the worker libraries'
# own tests (clients/python, clients/js), and the whole test suite (unit and
# integration tests, against real Redis servers, with real worker processes).
#
# Makes sure redis-server and redis-cli, and Chromium with chromedriver (the
# dashboard is tested in a real headless browser), are installed (apt-get when
# missing; CI runs this as root on a clean Debian machine). It does not start a Redis:
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
totals=""
on_exit() {
    local status=$?
    if [ "$status" -eq 0 ]; then
        local IFS=,
        printf '\n[flowcast] test.sh: ALL CHECKS PASSED (%s)\n' "${summary[*]}"
        # The closing line, in the plain form CI reads.
        [ -n "${totals:-}" ] && printf 'tests: %s\n' "$totals"
    else
        printf '\n[flowcast] test.sh: FAILED during %s (exit %s)\n' "$step" "$status" >&2
    fi
}
trap on_exit EXIT

ensure_cargo
ensure_redis_installed
ensure_worker_runtimes
ensure_chromium_installed
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

step="python worker library tests"
log_info "$step (python3 -m unittest, $(python3 --version))"
python3 -m unittest discover -s clients/python/tests
summary+=(" python ok")

step="javascript worker library tests"
log_info "$step (node --test, node $(node --version))"
node --test clients/js/test/
summary+=(" js ok")

step="cargo test --workspace"
log_info "$step $*"
# Unit, integration and bench tests (doc tests: none, and their empty run
# would be the last line a reader sees).
results="$(mktemp)"
cargo test --workspace --all-targets "$@" 2>&1 | tee "$results"
totals="$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { printf "%d passed, %d failed", p, f }' "$results")"
rm -f "$results"
summary+=(" tests ok")
step="done"
