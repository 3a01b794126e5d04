#!/usr/bin/env bash
# guard's main job on a bundled app, start to finish, under a private PM2 daemon.
#
#   scripts/demo.sh          the incident's layout (examples/demo/app, run from source):
#                            a first deploy, a good release, then a release that crashes at
#                            start, which guard rolls back on its own
#   scripts/demo.sh build    an app that builds on the server (examples/build/app): a first
#                            deploy, a good release, a build that fails half-way, a release
#                            that throws at import; the previous build serves after each
#
# Everything lives in a temporary folder that is removed at the end, and the private PM2
# daemon is stopped, whatever happens. Exits non-zero if any step does not end with the exit
# code it should (scripts/test.sh runs the first as a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

echo "==> building guard and installing the pinned pm2 (tests/node)"
cargo build --quiet --locked
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
guard="$repo/target/debug/guard"
pm2="$repo/tests/node/node_modules/.bin/pm2"

demo=$(mktemp -d "${TMPDIR:-/tmp}/guard-demo.XXXXXX")
export PM2_HOME="$demo/pm2"
cleanup() {
  "$pm2" kill >/dev/null 2>&1 || true
  rm -rf "$demo"
}
trap cleanup EXIT

port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
git_q() { git -c user.email=demo@guard.invalid -c user.name=guard-demo "$@"; }

layout=${1:-demo}
# An upstream repository with release v1, the server's checkout of it, env.env, guard.toml:
# the same fixture the tests and the benchmark use.
STABLE_FOR=3s examples/fixture.sh "$layout" "$demo" "$port" "$pm2"
export GUARD_CONFIG="$demo/guard.toml"
echo
echo "==> guard.toml"
cat "$GUARD_CONFIG"

release() {
  (cd "$demo/upstream" && printf '{ "version": "%s", "mode": "%s" }\n' "$1" "$2" > release.json \
    && git_q commit -qam "release $1 ($2)" && git push -q origin main)
}
failed=0
run() {
  local want=$1; shift
  echo
  echo "\$ guard $*"
  set +e; "$guard" "$@"; code=$?; set -e
  echo "(exit code $code)"
  if [ "$code" != "$want" ]; then
    echo "demo: expected exit $want from 'guard $*', got $code" >&2
    failed=1
  fi
}
serving() { echo "now serving: $(curl -s "http://127.0.0.1:$port/health" || echo 'nothing')"; }

echo
echo "==> 1. first deploy of release v1 (the app is not in PM2 yet)"
run 0 deploy
serving

echo
echo "==> 2. release v2 is good"
release v2 good
run 0 deploy
serving

if [ "$layout" = build ]; then
  echo
  echo "==> 3. release v3's build fails half-way: the half-built dist/ goes, v2's comes back, exit 3"
  release v3 build-fails
  run 3 deploy
  serving
  echo
  echo "==> 4. release v4 throws at import: guard rolls back to v2's build and dependencies, exit 3"
  release v4 crash-at-import
  run 3 deploy
  serving
else
  echo
  echo "==> 3. release v3 crashes at start: guard sees it, rolls back on its own, exits 3"
  release v3 crash-at-start
  run 3 deploy
  serving
fi

echo
echo "==> the status block and the incidents guard keeps"
run 0 health
run 0 list
echo
if [ "$failed" != 0 ]; then
  echo "demo FAILED: a step did not end as it should (see above)" >&2
  exit 1
fi
echo "demo done: the private PM2 daemon is stopped and $demo removed"
