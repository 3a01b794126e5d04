#!/usr/bin/env bash
# A Debian package of guard, built with dpkg-deb from the portable binary (glibc 2.17, so the
# one .deb installs on Debian 9+ and Ubuntu 16.04+):
#
#   scripts/package-deb.sh           -> target/deb/pm2-guard_<version>_amd64.deb (release build)
#   scripts/package-deb.sh --check   the same from the quicker build the test suite checks, then
#                                    installed with dpkg into a scratch root and run there
#
# The package is pm2-guard; it installs /usr/bin/guard, which Debian's ruby-guard also ships,
# so it declares `Conflicts: ruby-guard` and dpkg refuses to install one over the other (a
# server with ruby-guard installs the portable binary under another name instead, see the
# README). Also: man pages (one per subcommand), bash/zsh/fish completions, the systemd unit
# guard-watch@.service, and guard.toml.example, the README and the CHANGELOG under
# /usr/share/doc/pm2-guard.
set -euo pipefail
cd "$(dirname "$0")/.."
check=
if [ "${1:-}" = --check ]; then check=--check; fi
scripts/build-portable.sh $check
profile=release
if [ -n "$check" ]; then profile=portable-check; fi
bin="target/portable/x86_64-unknown-linux-gnu/$profile/guard"
version=$(awk -F'"' '/^version = /{print $2; exit}' Cargo.toml)
root=target/deb/root
rm -rf "$root"
install -D -m 0755 "$bin" "$root/usr/bin/guard"
mkdir -p "$root/usr/share/man/man1"
"$bin" man --dir "$root/usr/share/man/man1" >/dev/null
gzip -9n "$root"/usr/share/man/man1/*.1
install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d"
"$bin" completions bash > "$root/usr/share/bash-completion/completions/guard"
"$bin" completions zsh > "$root/usr/share/zsh/vendor-completions/_guard"
"$bin" completions fish > "$root/usr/share/fish/vendor_completions.d/guard.fish"
install -D -m 0644 examples/guard-watch.service "$root/lib/systemd/system/guard-watch@.service"
sed -i 's|/usr/local/bin/guard|/usr/bin/guard|g' "$root/lib/systemd/system/guard-watch@.service"
doc="$root/usr/share/doc/pm2-guard"
install -D -m 0644 guard.toml.example "$doc/guard.toml.example"
install -m 0644 README.md CHANGELOG.md "$doc/"
install -m 0644 LICENSE "$doc/copyright"
size=$(du -sk "$root" | cut -f1)
install -d "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: pm2-guard
Version: $version
Architecture: amd64
Maintainer: The guard authors <guard@invalid.example>
Installed-Size: $size
Depends: libc6 (>= 2.17)
Recommends: git
Conflicts: ruby-guard
Section: admin
Priority: optional
Description: safe deploys for a PM2-run Node.js backend
 guard cleans stale build output, backs the app up, runs the deploy step,
 restarts through PM2, verifies the result and rolls back on its own; guard
 watch alerts on crashes PM2 hides. The command is /usr/bin/guard.
CONTROL
mkdir -p target/deb
deb="target/deb/pm2-guard_${version}_amd64.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
sha256sum "$deb"
if [ -n "$check" ]; then
  # Installed for real by dpkg, into a scratch root (the machine's own packages untouched).
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  mkdir -p "$scratch/var/lib/dpkg/updates" "$scratch/var/lib/dpkg/info"
  touch "$scratch/var/lib/dpkg/status"
  # --force-depends: the scratch root has no libc6 entry; the host it runs on has libc6.
  dpkg --root="$scratch" --force-not-root --force-script-chrootless --force-depends --log=/dev/null -i "$deb" >/dev/null
  dpkg --root="$scratch" -s pm2-guard | grep -q '^Status: install ok installed'
  "$scratch/usr/bin/guard" --version
  test -s "$scratch/usr/share/man/man1/guard-deploy.1.gz"
  test -s "$scratch/lib/systemd/system/guard-watch@.service"
  grep -q '/usr/bin/guard' "$scratch/lib/systemd/system/guard-watch@.service"
  echo "installed with dpkg and run: ok"
fi
