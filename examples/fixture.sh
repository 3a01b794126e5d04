#!/usr/bin/env bash
# The one demo fixture, used by scripts/demo.sh, the integration tests and bench/: an upstream
# repository with release v1 of a bundled app, the server's checkout of it, its env file and a
# guard.toml, all under ROOT.
#
#   examples/fixture.sh demo|build ROOT PORT PM2_BIN
#
#   demo   examples/demo/app: run from source, deployed by `git pull` (the incident's layout)
#   build  examples/build/app: builds on the server (install into node_modules/, build into dist/)
#
# Verification settings come from the environment: STABLE_FOR (3s), DEADLINE (20s),
# TIMEOUT (2s), INTERVAL (250ms). INSTANCES=N (N > 1) runs the demo app in cluster mode with N
# instances, EXEC_MODE=cluster with one; STRATEGY sets [deploy] strategy (restart, reload,
# preflight, switch: the [switch] table is the caller's).
#
# Leaves: ROOT/origin.git, ROOT/upstream (a developer's clone: commit and push releases there),
# ROOT/app (the server's checkout, app.dir), ROOT/app/env.env, ROOT/guard.toml. Starts nothing.
set -euo pipefail
kind=${1:?usage: fixture.sh demo|build ROOT PORT PM2_BIN}
root=${2:?ROOT}
port=${3:?PORT}
pm2=${4:?PM2_BIN}
here=$(cd "$(dirname "$0")" && pwd)
case "$kind" in
  demo)
    src="$here/demo/app"; name=demo-backend
    deploy_command='git pull --ff-only'
    clean=''
    files='["ecosystem.config.js", "env.env", "package.json"]'
    ;;
  build)
    src="$here/build/app"; name=build-backend
    deploy_command='git pull --ff-only && node install.cjs && node build.cjs'
    # dist/ is the build output PM2 runs: removed before the build (nothing stale survives),
    # never after it, and restored with the rest by a rollback.
    clean=$'[clean]\npaths = ["dist"]\nafter_deploy = false\n'
    # No ecosystem file named: guard finds ecosystem.config.js/.cjs/.json/.yml after each
    # deploy step, so a release may rename it.
    files='["env.env", "package.json"]'
    ;;
  *) echo "fixture.sh: unknown fixture $kind (demo or build)" >&2; exit 2 ;;
esac

git_q() { git -c user.email=fixture@guard.invalid -c user.name=guard-fixture "$@"; }
mkdir -p "$root"
git init -q --bare -b main "$root/origin.git"
git clone -q "$root/origin.git" "$root/upstream" 2>/dev/null
cp -R "$src/." "$root/upstream/"
rm "$root/upstream/env.env.example"
if [ "${INSTANCES:-1}" != 1 ] || [ "${EXEC_MODE:-}" = cluster ]; then
  sed -i "s/exec_mode: 'fork'/exec_mode: 'cluster'/; s/instances: 1,/instances: ${INSTANCES:-1},/" "$root/upstream/ecosystem.config.js"
fi
(cd "$root/upstream" && git checkout -q -b main && git add -A && git_q commit -qm "release v1" && git push -q origin main)
git clone -q "$root/origin.git" "$root/app"
sed "s/^PORT=.*/PORT=$port/" "$src/env.env.example" > "$root/app/env.env"
chmod 600 "$root/app/env.env"   # it holds secrets: `guard check` fails a world-readable one

cat > "$root/guard.toml" <<TOML
[app]
name = "$name"
dir = "app"

[backup]
dir = "backups"
files = $files

$clean
[deploy]
command = "$deploy_command"
${STRATEGY:+strategy = \"$STRATEGY\"}

[health]
url = "http://127.0.0.1:$port/health"
timeout = "${TIMEOUT:-2s}"
deadline = "${DEADLINE:-20s}"
stable_for = "${STABLE_FOR:-3s}"
interval = "${INTERVAL:-250ms}"

[pm2]
bin = "$pm2"
home = "pm2"

[check]
sentry_flag = "SENTRY_ENABLED"
TOML
