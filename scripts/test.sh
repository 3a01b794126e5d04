#!/usr/bin/env bash
# guard's whole test suite on a fresh machine with Rust and Node.js/npm: installs the pinned
# pm2 locally (tests/node, no global install, no sudo), checks format and lints, runs the unit
# tests and the integration tests against real PM2, git and HTTP on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo node npm git; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool is required to run the tests and is not on PATH" >&2
    exit 1
  fi
done

echo "==> installing pinned pm2 into tests/node (npm ci)"
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

echo "==> cargo fmt --check"
cargo fmt --check

echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "==> cargo test"
cargo test --locked -- --test-threads=6

# The build layout's demo (scripts/demo.sh build) is what tests/guard/build.rs and
# snapshots.rs exercise; only the README's first command is run again here, to keep the suite
# quick.
echo "==> smoke run of the README's demo (scripts/demo.sh)"
scripts/demo.sh > target/demo.log 2>&1 || { cat target/demo.log; echo "error: scripts/demo.sh failed" >&2; exit 1; }
echo "demo ok"
