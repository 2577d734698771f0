#!/usr/bin/env python3
"""Side-by-side figures of the A/B runs `ab.sh` kept in a directory.

    ab_summary.py DIR

Reads DIR/a-N.json and DIR/b-N.json (one bc-load JSON line each) and prints, per run,
what the scenario measures: for `fanout`, Backchannel's CPU µs per delivery, its ratio to
the relay, its p99 and its lost deliveries in each fixed round; for `durable`, each
store's acknowledged notes per second, hub CPU µs per ack, ack p99 and errors. A build
that loses deliveries is broken, not fast: read the lost deliveries first. Then each figure's median over A's
runs and over B's, and B's median over A's.
"""

import json
import pathlib
import statistics
import sys


def figures(line):
    """The figures of one run, as {name: [values]} (several values: one per round)."""
    scenario = line.get("scenario")
    out = {}
    if scenario == "fanout":
        hub = line["backchannel"]
        rounds = hub["fixed_rounds"]
        out["µs per delivery"] = [r["server_cpu_us_per_delivery"] for r in rounds]
        # A round that delivered nothing has no percentiles: it shows as lost deliveries.
        out["p99 ms"] = [r["latency"]["p99_ms"] for r in rounds if "p99_ms" in r["latency"]]
        out["lost deliveries"] = [r["lost"] for r in rounds]
        ratio = line.get("ratio_to_relay") or {}
        if ratio.get("cpu_us_per_delivery_fixed_rounds"):
            out["ratio to relay"] = ratio["cpu_us_per_delivery_fixed_rounds"]
        out["other load"] = [r["other_cpu_util"] for r in rounds]
    elif scenario == "durable":
        for store in ("sqlite", "postgres"):
            if store in line:
                run = line[store]
                out[f"{store} acks/s"] = [run["acks_per_s"]]
                out[f"{store} µs per ack"] = [run["server_cpu_us_per_ack"]]
                out[f"{store} ack p99 ms"] = [run["ack_latency"].get("p99_ms")]
                out[f"{store} errors"] = [run["correctness"]["errors"]]
    else:
        raise SystemExit(f"ab_summary.py: no summary for scenario {scenario!r}")
    return out


def load(directory, side):
    runs = []
    for path in sorted(directory.glob(f"{side}-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        text = path.read_text().strip()
        if not text:
            print(f"{path.name}: no result (the run failed)")
            continue
        runs.append((path.stem, figures(json.loads(text))))
    return runs


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    directory = pathlib.Path(sys.argv[1])
    sides = {side: load(directory, side) for side in ("a", "b")}
    if not any(sides.values()):
        raise SystemExit(f"ab_summary.py: no a-N.json or b-N.json results in {directory}")
    names = []
    for runs in sides.values():
        for _, figs in runs:
            names.extend(n for n in figs if n not in names)
    for name in names:
        print(name)
        medians = {}
        for side, runs in sides.items():
            values = [v for _, figs in runs for v in figs.get(name, []) if v is not None]
            shown = " / ".join(f"{v:g}" for v in values)
            if values:
                medians[side] = statistics.median(values)
                print(f"  {side.upper()}: {shown}   median {medians[side]:g}")
        if len(medians) == 2 and medians["a"]:
            print(f"  B / A: {medians['b'] / medians['a']:.3f}")


if __name__ == "__main__":
    main()
