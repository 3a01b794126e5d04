#!/usr/bin/env bash
# guard's main job on the bundled demo app, start to finish, under a private PM2 daemon:
# a first deploy, a good release, then a release that crashes at start, which guard rolls
# back on its own. Everything lives in a temporary folder that is removed at the end, and
# the private PM2 daemon is stopped, whatever happens.
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

# An upstream repository with release v1, and the server's checkout of it.
git init -q --bare -b main "$demo/origin.git"
git clone -q "$demo/origin.git" "$demo/upstream" 2>/dev/null
cp -R examples/demo/app/. "$demo/upstream/"
rm "$demo/upstream/env.env.example"
(cd "$demo/upstream" && git checkout -q -b main && git add -A && git_q commit -qm "release v1" && git push -q origin main)
git clone -q "$demo/origin.git" "$demo/app"
sed "s/^PORT=.*/PORT=$port/" examples/demo/app/env.env.example > "$demo/app/env.env"

cat > "$demo/guard.toml" <<TOML
[app]
name = "demo-backend"
dir = "app"
[backup]
dir = "backups"
files = ["ecosystem.config.js", "env.env", "package.json"]
[deploy]
command = "git pull --ff-only"
[health]
url = "http://127.0.0.1:$port/health"
stable_for = "3s"
deadline = "20s"
[pm2]
bin = "$pm2"
home = "pm2"
TOML
export GUARD_CONFIG="$demo/guard.toml"

release() {
  (cd "$demo/upstream" && printf '{ "version": "%s", "mode": "%s" }\n' "$1" "$2" > release.json \
    && git_q commit -qam "release $1 ($2)" && git push -q origin main)
}
run() {
  echo
  echo "\$ guard $*"
  set +e; "$guard" "$@"; code=$?; set -e
  echo "(exit code $code)"
}
serving() { echo "now serving: $(curl -s "http://127.0.0.1:$port/health" || echo 'nothing')"; }

echo
echo "==> 1. first deploy of release v1 (the app is not in PM2 yet)"
run deploy
serving

echo
echo "==> 2. release v2 is good"
release v2 good
run deploy
serving

echo
echo "==> 3. release v3 crashes at start: guard sees it, rolls back on its own, exits 3"
release v3 crash-at-start
run deploy
serving

echo
echo "==> 4. the status block and the incidents guard keeps"
run health
run list
echo
echo "demo done: the private PM2 daemon is stopped and $demo removed"
