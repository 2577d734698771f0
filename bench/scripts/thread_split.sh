#!/usr/bin/env bash
# Splits the hub's CPU by thread during one measured step of a `bc-load` scenario: each
# thread's `utime + stime` (from /proc/PID/task/TID/stat, in clock ticks of 10 ms) over a
# window that starts DELAY seconds into the step, as a share of a core and in µs per
# delivery (`fanout`, the first fixed round) or per acknowledged note (`durable`).
#
#   bench/scripts/thread_split.sh fanout --targets backchannel --rounds 1 --no-search --history 100000
#   bench/scripts/thread_split.sh durable --stores sqlite
#
# Environment: BC_LOAD (default target/release/bc-load), DELAY (s, default 3), WINDOW (s,
# default 6; keep it inside the step: fanout's fixed step is 10 s after a 2 s warm-up,
# durable's 10 s after 2 s). The scenario's own JSON line is kept in $OUT/split.json.
set -euo pipefail
cd "$(dirname "$0")/../.."

scenario=${1:?"usage: $0 fanout|durable [bc-load flags]"}
shift
case "$scenario" in
  fanout) started="backchannel: fixed step" ;;
  durable) started="connections ready" ;;
  *) echo "$0: the split is read during fanout's fixed step or durable's run" >&2; exit 2 ;;
esac
bc_load=${BC_LOAD:-target/release/bc-load}
delay=${DELAY:-3}
window=${WINDOW:-6}
out=${OUT:-$(mktemp -d)}
# shellcheck source=step.sh
. bench/scripts/step.sh

start_step "$out/split" "$started" "$scenario" "$@"
sleep "$delay"

# Clock ticks per thread name (threads of one name, such as tokio's workers, summed).
ticks() {
  for task in /proc/"$pid"/task/*; do
    # comm may hold spaces; utime and stime are fields 14 and 15 after it.
    stat=$(cat "$task/stat" 2>/dev/null) || continue
    name=${stat#*(}; name=${name%)*}; rest=${stat##*) }
    set -- $rest
    echo "${name// /_} $(( ${12} + ${13} ))"
  done | awk '{ t[$1] += $2 } END { for (n in t) print n, t[n] }' | sort
}
ticks >"$out/before"
sleep "$window"
ticks >"$out/after"
wait "$load"

per_s=$(python3 - "$out/split.json" "$scenario" <<'EOF'
import json, sys
line = json.load(open(sys.argv[1]))
if sys.argv[2] == "fanout":
    print(line["backchannel"]["fixed_rounds"][0]["deliveries_per_s"])
else:
    print(next(v["acks_per_s"] for k, v in line.items() if isinstance(v, dict) and "acks_per_s" in v))
EOF
)
unit=$([ "$scenario" = fanout ] && echo delivery || echo ack)
hz=$(getconf CLK_TCK)
echo "$scenario: $per_s per second; each thread over ${window} s, from ${delay} s into the step (pid $pid)"
join "$out/before" "$out/after" | awk -v hz="$hz" -v w="$window" -v n="$per_s" -v unit="$unit" '
  { share = ($3 - $2) / hz / w; total += share
    printf "%-18s %.3f of a core  %6.2f µs per %s\n", $1, share, share * 1e6 / n, unit }
  END { printf "%-18s %.3f of a core  %6.2f µs per %s\n", "all", total, total * 1e6 / n, unit }'
