#!/usr/bin/env bash
# Runs every fuzz target in the module for a short time (default 5s each).
# Seed corpora always run as part of `go test`; this adds fresh inputs.
# A finding fails the run and leaves the crashing input under testdata/fuzz/
# for `go test` to replay: commit it with the fix.
set -euo pipefail
t=${1:-5s}
n=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
fuzz() { go test -run='^$' -fuzz="^${2}\$" -fuzztime="$t" -parallel=2 "$1" >"$log" 2>&1; }
while IFS=: read -r file fn; do
  pkg=./$(dirname "$file")
  echo "fuzz: $pkg $fn ($t)"
  if ! fuzz "$pkg" "$fn"; then
    # Go's fuzzing coordinator can fail with "context deadline exceeded"
    # when the machine is loaded and a worker does not stop in time; that
    # is no finding (nothing is written to testdata/fuzz). Try once more.
    if grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
      echo "fuzz: $pkg $fn: the fuzzing engine timed out stopping a worker (no failing input); running it again"
      fuzz "$pkg" "$fn" || { cat "$log" >&2; echo "fuzz: $pkg $fn FAILED" >&2; exit 1; }
    else
      cat "$log" >&2
      echo "fuzz: $pkg $fn FAILED" >&2
      exit 1
    fi
  fi
  n=$((n + 1))
done < <(git ls-files '*_test.go' | xargs grep -Ho '^func Fuzz[A-Za-z0-9_]*' | sed 's/:func /:/' | sort -u)
echo "fuzz: $n targets, $t each, no failures"
