# Sourced by thread_split.sh and callgrind.sh (not run on its own).
#
# start_step PREFIX STARTED ARGS...: runs `$bc_load ARGS...` in the background, its JSON
# line to PREFIX.json and its progress to PREFIX.err, and returns once a line of that
# progress matches STARTED (the measured step has begun). Sets `load`, bc-load's pid,
# and `pid`, the server it spawned last (the one whose step has begun).
start_step() {
  local prefix=$1 started=$2
  shift 2
  "$bc_load" "$@" >"$prefix.json" 2>"$prefix.err" &
  load=$!
  until grep -q "$started" "$prefix.err" 2>/dev/null; do
    kill -0 "$load" 2>/dev/null || { cat "$prefix.err" >&2; exit 1; }
    sleep 0.2
  done
  pid=$(grep -o 'serving on [^ ]* (pid Some([0-9]*))' "$prefix.err" | tail -n 1 |
    grep -o '[0-9]*))' | tr -d ')')
}
