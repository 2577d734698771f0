#!/usr/bin/env bash
# Counts the hub's instructions per thread with callgrind during one measured step of a
# `bc-load` scenario. Instruction counts do not depend on what else the machine is doing,
# so two builds can be compared by a few percent where timed runs cannot
# (docs/benchmarks-log.md uses this for its A/B pairs).
#
#   bench/scripts/callgrind.sh fanout  SERVER_BIN LABEL   # 50 rooms at 1,100 deliveries/s, 15 s of the fixed step
#   bench/scripts/callgrind.sh durable SERVER_BIN LABEL   # closed loop, 8 s
#
# The server runs under valgrind with instrumentation off until DELAY seconds into the
# step (default 3), then on for WINDOW seconds (fanout 15, durable 8): the start-up and
# the history are not counted. Output: $OUT/cg.LABEL.PID.1-NN, one file per thread
# (`--separate-threads=yes`), and each busy thread's instructions per unit of work,
# counted by callgrind itself (`callgrind_per_unit.py`): events appended (calls of
# `NewEvent::seal`) in durable, live deliveries (calls of `Outbox::try_push`) in fanout.
#
# Under valgrind the hub runs ~50 times slower, so fanout's rate is low and its commits
# hold ~1 event: per-commit costs weigh more than at the page's fixed step. valgrind also
# has no SHA extensions, so SHA-256 takes `sha2`'s portable path and looks ~10 times
# its native cost.
set -euo pipefail
cd "$(dirname "$0")/../.."

scenario=${1:?"usage: $0 fanout|durable SERVER_BIN LABEL"}
server_bin=$(realpath "${2:?"usage: $0 fanout|durable SERVER_BIN LABEL"}")
label=${3:?"usage: $0 fanout|durable SERVER_BIN LABEL"}
bc_load=${BC_LOAD:-target/release/bc-load}
delay=${DELAY:-3}
out=${OUT:-$(mktemp -d)}
# shellcheck source=step.sh
. bench/scripts/step.sh
command -v valgrind >/dev/null || { echo "$0: valgrind is not installed" >&2; exit 1; }

# bc-load starts the server as `SERVER_BIN serve ...`: this wrapper puts valgrind first.
wrapper=$out/callgrind-wrapper.sh
cat >"$wrapper" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes \\
  --callgrind-out-file=$out/cg.$label.%p "$server_bin" "\$@"
EOF
chmod +x "$wrapper"

case "$scenario" in
  fanout)
    started="backchannel: fixed step"
    window=${WINDOW:-15}
    args=(fanout --targets backchannel --rooms 50 --rate 1100 --history 5000 --no-search
      --rounds 1 --duration-s 20)
    ;;
  durable)
    started="connections ready"
    window=${WINDOW:-8}
    args=(durable --stores sqlite --duration-s 14)
    ;;
  *) echo "$0: fanout or durable" >&2; exit 2 ;;
esac

start_step "$out/cg.$label" "$started" "${args[@]}" --server-bin "$wrapper"
sleep "$delay"
callgrind_control -i on "$pid" >/dev/null 2>&1
sleep "$window"
callgrind_control -i off "$pid" >/dev/null 2>&1
callgrind_control -d "$pid" >/dev/null 2>&1
wait "$load"

case "$scenario" in
  fanout) unit=delivery counted='backchannel::ws::outbox::Outbox::try_push' ;;
  durable) unit=event counted='backchannel::store::NewEvent::seal' ;;
esac
echo "$scenario under callgrind, ${window} s from ${delay} s into the step (pid $pid):"
python3 bench/scripts/callgrind_per_unit.py "$unit" "$counted" "$out/cg.$label.$pid".1-*
