#!/usr/bin/env bash
# Benchmarks, each printing a Markdown table (the ones in the README):
#   bench/run.sh            both
#   bench/run.sh verdicts   the incident report's manual procedure vs `guard deploy`, five releases
#   bench/run.sh tree       whole-tree snapshots and restores on a 27,000-file, 500 MB tree,
#                           vs `cp -a` and Capistrano-style release folders
#   bench/run.sh strategies restart vs preflight vs reload vs switch (behind nginx): failed
#                           requests of a 50 ms poller through deploys of a good, a crashing and
#                           a failing release, and through a rollback (time to v1 answering)
#   bench/run.sh esm        an ESM release that throws at import (PM2 keeps it online): failed
#                           requests and time to verdict with guard's load-error rule on and off,
#                           beside a CommonJS crash
#   bench/run.sh load       BENCH_DEPLOYS (20) good deploys beside two CPU hogs: false verdicts with
#                           a timed-out probe retried (default) and counted at once; a hanging
#                           /health still failed
#   bench/run.sh watch      guard watch: crash and health-failure alert latency vs a 2-minute
#                           uptime monitor; CPU and RSS over BENCH_WATCH_SECONDS (600) vs a
#                           `pm2 jlist` loop
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
what=${1:-all}
if [ "$what" = all ] || [ "$what" = verdicts ]; then node bench/verdicts.mjs; fi
if [ "$what" = all ] || [ "$what" = tree ]; then node bench/tree.mjs; fi
if [ "$what" = all ] || [ "$what" = strategies ]; then node bench/strategies.mjs; fi
if [ "$what" = all ] || [ "$what" = watch ]; then node bench/watch.mjs; fi
if [ "$what" = all ] || [ "$what" = esm ]; then node bench/esm.mjs; fi
if [ "$what" = all ] || [ "$what" = load ]; then node bench/load.mjs; fi
