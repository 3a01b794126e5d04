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
cargo test --locked -- --test-threads=4

echo "==> smoke run of the README's demos (scripts/demo.sh, scripts/demo.sh build)"
for layout in demo build; do
  scripts/demo.sh "$layout" > "target/demo-$layout.log" 2>&1 || {
    cat "target/demo-$layout.log"; echo "error: scripts/demo.sh $layout failed" >&2; exit 1; }
  echo "demo $layout ok"
done
