#!/usr/bin/env bash
# guard's whole test suite on a fresh machine with Rust, Node.js/npm and Python 3: installs the
# pinned pm2 locally (tests/node, no global install, no sudo) and ansible-core into a
# virtualenv (target/ansible-venv), nginx, promtool, zsh and fish (Debian packages, as root)
# when missing,
# checks format and lints, runs the unit tests and the
# integration tests against real PM2, git, HTTP on 127.0.0.1 and Ansible, checks that the
# portable build needs glibc 2.17 at most, packages it as a .deb installed with dpkg, and runs
# the README's demo.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo node npm git python3 objdump dpkg-deb; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool is required to run the tests and is not on PATH" >&2
    exit 1
  fi
done

echo "==> installing pinned pm2 into tests/node (npm ci)"
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

echo "==> installing ansible-core into target/ansible-venv (examples/ansible/requirements.txt)"
stamp=target/ansible-venv/.requirements
if ! cmp -s examples/ansible/requirements.txt "$stamp" 2>/dev/null; then
  rm -rf target/ansible-venv
  python3 -m venv target/ansible-venv
  target/ansible-venv/bin/pip install --quiet --disable-pip-version-check -r examples/ansible/requirements.txt
  cp examples/ansible/requirements.txt "$stamp"
fi
target/ansible-venv/bin/ansible-playbook --version | sed -n 1p
echo "==> ansible-lint --profile production examples/ansible/rollout.yml"
(cd examples/ansible && PATH="$PWD/../../target/ansible-venv/bin:$PATH" ansible-lint --offline --nocolor --profile production rollout.yml)

# nginx (the switch tests put a real one in front of the app), promtool (the metrics test
# checks guard watch --metrics with it), zsh and fish (the completion tests run them):
# Debian's packages, installed when missing.
echo "==> nginx, promtool, zsh, fish (Debian's packages when missing)"
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v zsh >/dev/null 2>&1 || missing+=(zsh)
command -v fish >/dev/null 2>&1 || missing+=(fish)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "error: the tests need ${missing[*]}: run \`sudo apt-get install -y ${missing[*]}\`" >&2
    exit 1
  fi
fi
"$(command -v nginx || echo /usr/sbin/nginx)" -v
promtool --version 2>&1 | sed -n 1p

echo "==> cargo fmt --check"
cargo fmt --check

echo "==> cargo clippy"
cargo clippy --all-targets --features real-pm2 --locked -- -D warnings

# Unit tests, the tier without PM2 (tests/cli) and the real-PM2 tier (tests/guard).
echo "==> cargo test --features real-pm2"
cargo test --features real-pm2 --locked -- --test-threads=6

# After the tests, not beside them: compiling on both cores starves the timing of the
# integration tests (a 1 s health probe times out).
echo "==> portable build (glibc 2.17 at most) and its .deb, installed with dpkg (scripts/package-deb.sh --check)"
if ! scripts/package-deb.sh --check > target/package-check.log 2>&1; then
  cat target/package-check.log
  echo "error: the portable build, its glibc check or the .deb failed" >&2
  exit 1
fi
grep -E "needs glibc|^guard |installed with dpkg" target/package-check.log

# The build layout's demo (scripts/demo.sh build) is what tests/guard/build.rs and
# snapshots.rs exercise; only the README's first command is run again here, to keep the suite
# quick.
echo "==> smoke run of the README's demo (scripts/demo.sh)"
scripts/demo.sh > target/demo.log 2>&1 || { cat target/demo.log; echo "error: scripts/demo.sh failed" >&2; exit 1; }
echo "demo ok"
