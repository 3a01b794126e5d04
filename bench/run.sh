#!/usr/bin/env bash
# Benchmark: the incident report's manual procedure against `guard deploy`, side by side on the
# demo app under a private PM2 daemon, for five releases; then guard's own CPU and peak RSS
# across a deploy with stable_for = 10s. Prints a Markdown table (the one in the README).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
exec node bench/verdicts.mjs "$@"
