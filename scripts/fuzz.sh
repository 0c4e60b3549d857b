#!/usr/bin/env bash
# Runs every fuzz target in the module for a short time (default 5s each).
# Seed corpora always run as part of `go test`; this adds fresh inputs.
# A failure leaves the crashing input under testdata/fuzz/ for `go test` to replay.
set -euo pipefail
t=${1:-5s}
n=0
while IFS=: read -r file fn; do
  pkg=./$(dirname "$file")
  echo "fuzz: $pkg $fn ($t)"
  go test -run='^$' -fuzz="^${fn}\$" -fuzztime="$t" -parallel=2 "$pkg" >/tmp/fuzz.$$.log 2>&1 || {
    cat /tmp/fuzz.$$.log >&2; rm -f /tmp/fuzz.$$.log
    echo "fuzz: $pkg $fn FAILED" >&2; exit 1; }
  n=$((n + 1))
done < <(git ls-files '*_test.go' | xargs grep -Ho '^func Fuzz[A-Za-z0-9_]*' | sed 's/:func /:/' | sort -u)
rm -f /tmp/fuzz.$$.log
echo "fuzz: $n targets, $t each, no failures"
