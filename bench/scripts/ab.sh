#!/usr/bin/env bash
# Runs one bc-load scenario against two server builds in alternating pairs (A, B, A, B,
# ...), so the machine's drift falls on both alike, and prints each run's figures side
# by side with the medians (`ab_summary.py`). This is how docs/benchmarks-log.md's A/B
# pairs are taken: timed figures on this shared machine move by ±15 % within minutes, so
# a change is judged by its pairs, never by one run against an older one.
#
#   bench/scripts/ab.sh A_BIN B_BIN PAIRS fanout --targets both --rounds 2 --no-search --history 100000
#   bench/scripts/ab.sh A_BIN B_BIN PAIRS durable --stores sqlite
#
# Everything after PAIRS is bc-load's, with `--server-bin` added per run. Environment:
# BC_LOAD (default target/release/bc-load), OUT (default a new temporary directory):
# each run's JSON line is kept as $OUT/{a,b}-N.json and its progress as .err.
set -euo pipefail
cd "$(dirname "$0")/../.."

usage="usage: $0 A_BIN B_BIN PAIRS SCENARIO [BC-LOAD ARGS...]"
a_bin=$(realpath "${1:?$usage}")
b_bin=$(realpath "${2:?$usage}")
pairs=${3:?$usage}
shift 3
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
bc_load=${BC_LOAD:-target/release/bc-load}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"

for ((pair = 1; pair <= pairs; pair++)); do
  for side in a b; do
    bin=$a_bin
    [ "$side" = b ] && bin=$b_bin
    echo "$(date -u +%H:%M:%S) pair $pair, $side: $bin" >&2
    # A failed run is reported and the pairs go on: its file stays empty.
    "$bc_load" "$@" --server-bin "$bin" >"$out/$side-$pair.json" 2>"$out/$side-$pair.err" ||
      echo "$0: run $side-$pair failed (see $out/$side-$pair.err)" >&2
  done
done
echo "A = $a_bin" >&2
echo "B = $b_bin" >&2
echo "runs in $out" >&2
python3 bench/scripts/ab_summary.py "$out"
