#!/usr/bin/env bash
# Fails when BINARY needs a glibc newer than MAX: reads the GLIBC_x.y versions of the
# symbols it imports (objdump -T), as the dynamic loader will on the server.
#   scripts/check-glibc.sh BINARY [MAX=2.17]
set -euo pipefail
bin=${1:?usage: check-glibc.sh BINARY [MAX]}
max=${2:-2.17}
need=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -uV | tail -n 1)
if [ -z "$need" ]; then
  echo "error: $bin imports no versioned glibc symbol (not a dynamically linked glibc binary?)" >&2
  exit 1
fi
if [ "$(printf '%s\n%s\n' "$need" "$max" | sort -V | tail -n 1)" != "$max" ]; then
  echo "error: $bin needs glibc $need, newer than $max:" >&2
  objdump -T "$bin" | grep -E "GLIBC_$need\b" | awk '{print "  " $NF}' | sort -u >&2
  exit 1
fi
echo "$bin needs glibc $need at most (target $max)"
