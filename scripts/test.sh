#!/usr/bin/env bash
# The test command (README, .ci/run): installs the test tools if missing, then runs every
# check CI runs, in order. Fails on the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "setup test tools"
scripts/setup-test-tools.sh

# Tests that need the Python tools fail (instead of skipping) when they are missing.
export NEMS_REQUIRE_TOOLS=1
export NEMS_VENV="$PWD/.venv"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "buf lint and format"
tools/node_modules/.bin/buf lint
tools/node_modules/.bin/buf format --diff --exit-code

step "tests (includes the codegen drift check)"
cargo nextest run --workspace --locked --no-fail-fast

step "e2e tests on PostgreSQL (the backend matrix: every stack's core on a database of its own)"
scripts/with-postgres.sh cargo nextest run -p nems-e2e --locked --no-fail-fast

step "doc tests and rustdoc warnings"
cargo test --workspace --doc --locked
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "all checks passed"
