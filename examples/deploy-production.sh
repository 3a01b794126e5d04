#!/usr/bin/env bash
# deploy-production.sh, rewritten around guard: the clean check, backup, deploy step, restart,
# health proof and rollback of the incident report's procedure are one `guard deploy`.
# Run on the server (e.g. `ssh root@server /var/www/app/backend/deploy-production.sh`).
set -uo pipefail

APP_DIR=/var/www/onai-integrator-login-main/backend
export GUARD_CONFIG="$APP_DIR/guard.toml"

guard deploy          # deploy.command in guard.toml does the `git pull --ff-only`
code=$?

case $code in
  0) echo "deploy OK: new version verified healthy" ;;
  3) echo "DEPLOY FAILED, ROLLED BACK: the previous version is healthy again; see 'guard incidents' and the incident's logs/" ;;
  4) echo "DEPLOY FAILED AND SERVICE NOT VERIFIED HEALTHY: a human must act now ('guard health', 'guard rollback latest')" ;;
  5) echo "another deploy is running (see the message above); nothing was changed" ;;
  2) echo "guard refused the input (config, flags, files); nothing was changed" ;;
  130|143) echo "deploy interrupted; guard restored the previous state before exiting" ;;
  *) echo "deploy failed (exit $code)" ;;
esac
exit $code
