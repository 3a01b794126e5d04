#!/usr/bin/env bash
# A guard binary for any x86_64 Linux with glibc 2.17 or later (RHEL/CentOS 7 and 8, Amazon
# Linux 2, Ubuntu 16.04+, Debian 9+), where `cargo build --release` on a new distribution
# needs that distribution's glibc:
#
#   scripts/build-portable.sh           -> target/portable/x86_64-unknown-linux-gnu/release/guard
#   scripts/build-portable.sh --check   the quicker unoptimised build the test suite checks
#
# zig (a C toolchain with glibc 2.17's symbol versions) and cargo-zigbuild come from the Python
# package registry into target/zig-venv (scripts/portable-requirements.txt); rustup needs no
# extra target. The result is checked with scripts/check-glibc.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/zig-venv
if [ ! -x "$venv/bin/cargo-zigbuild" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/portable-requirements.txt
fi
export PATH="$PWD/$venv/bin:$PATH"
triple=x86_64-unknown-linux-gnu
profile=release
if [ "${1:-}" = --check ]; then profile=portable-check; fi
# No build path in the binary (panic locations, debug info): the checkout and cargo's home
# become /guard and /cargo.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$PWD=/guard --remap-path-prefix=$cargo_home=/cargo"
# The same for the C of aws-lc (TLS), whose asserts hold __FILE__.
export CFLAGS="${CFLAGS:-} -ffile-prefix-map=$PWD=/guard -ffile-prefix-map=$cargo_home=/cargo"
cargo zigbuild --quiet --locked --profile "$profile" --target "$triple.2.17" --target-dir target/portable
bin="target/portable/$triple/$profile/guard"
scripts/check-glibc.sh "$bin" 2.17
if grep -q -a -F "$PWD/" "$bin" || grep -q -a -F "$cargo_home/" "$bin"; then
  echo "error: $bin holds a build path ($PWD or $cargo_home)" >&2
  exit 1
fi
"$bin" --version
sha256sum "$bin"
