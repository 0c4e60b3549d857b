#!/usr/bin/env bash
# Runs every fuzz target in the module for a short time (default 5s each).
# Seed corpora always run as part of `go test`; this adds fresh inputs.
# A finding fails the run and leaves the crashing input under testdata/fuzz/
# for `go test` to replay: commit it with the fix.
#
# FUZZJOBS targets (default: the number of cores) fuzz at once, one worker
# each. -fuzztime is wall time, so this halves the step on 2 cores (each
# target gets the same seconds, with one worker instead of two) and overlaps
# one target's build and baseline-coverage pass with another's fuzzing.
# FUZZ_ONLY=REGEXP runs only the targets whose "file:FuzzName" matches.
set -euo pipefail
t=${1:-5s}
jobs_max=${FUZZJOBS:-$(nproc)}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

fuzz() { go test -run='^$' -fuzz="^${2}\$" -fuzztime="$t" -parallel=1 "$1" >"$3" 2>&1; }

# one PKG FN: fuzz one target; its output is printed only if it fails.
one() {
  local pkg=$1 fn=$2 log=$dir/${1//\//_}.$2.log
  if fuzz "$pkg" "$fn" "$log"; then
    echo "fuzz: $pkg $fn ($t) ok"
    return 0
  fi
  # Go's fuzzing coordinator can fail with "context deadline exceeded"
  # when the machine is loaded and a worker does not stop in time; that
  # is no finding (nothing is written to testdata/fuzz). Try once more.
  if grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
    echo "fuzz: $pkg $fn: the fuzzing engine timed out stopping a worker (no failing input); running it again"
    fuzz "$pkg" "$fn" "$log" && { echo "fuzz: $pkg $fn ($t) ok"; return 0; }
  fi
  cat "$log" >&2
  echo "fuzz: $pkg $fn FAILED" >&2
  : >"$dir/FAILED"
  return 1
}

n=0
while IFS=: read -r file fn; do
  # Keep jobs_max running; start nothing new after a failure.
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || true; done
  [ ! -e "$dir/FAILED" ] || break
  one "./$(dirname "$file")" "$fn" &
  n=$((n + 1))
done < <(git ls-files '*_test.go' | xargs grep -Ho '^func Fuzz[A-Za-z0-9_]*' | sed 's/:func /:/' | sort -u | grep -E "${FUZZ_ONLY:-.}")
wait
[ ! -e "$dir/FAILED" ] || { echo "fuzz: a target failed (above); its input is under testdata/fuzz/" >&2; exit 1; }
echo "fuzz: $n targets, $t each, $jobs_max at a time, no failures"
