#!/usr/bin/env python3
"""Instructions per unit of work in callgrind's per-thread files (callgrind.sh's output).

    callgrind_per_unit.py UNIT FUNCTION FILE...

The units are counted by callgrind itself: how many times FUNCTION was called, summed
over its callers in every file (`callgrind_annotate --tree=caller` lists, above each
function's `*` line, the functions that called it and how often). Each file's total is
then divided by that count.
"""

import re
import subprocess
import sys


def totals(path):
    with open(path) as f:
        for line in f:
            if line.startswith("totals:"):
                return int(line.split()[1])
    return 0


def calls(path, function):
    tree = subprocess.run(
        ["callgrind_annotate", "--tree=caller", "--auto=no", path],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    count, callers = 0, []
    for line in tree:
        if "  <  " in line or " < " in line:
            callers.append(line)
            continue
        if " *  " in line:
            name = line.split(":", 1)[-1].split(" [")[0].strip()
            if name == function:
                for caller in callers:
                    count += sum(
                        int(n.replace(",", ""))
                        for n in re.findall(r"\(([\d,]+)x\)", caller)
                    )
        callers = []
    return count


def main():
    unit, function, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    busy = [(path, totals(path)) for path in files]
    busy = [(path, total) for path, total in busy if total > 0]
    units = sum(calls(path, function) for path, _ in busy)
    for path, total in busy:
        per = f", {total / units:,.0f} per {unit}" if units else ""
        print(f"  {path}: {total:,} instructions{per}")
    print(f"  per {unit}: {units:,} calls of {function} in the window")


if __name__ == "__main__":
    main()
