#!/usr/bin/env python3
"""What one durable commit costs this machine before any database work: N bytes written
at the end of a preallocated file, then fdatasync, 2,000 times. Prints the CPU (user +
system) per commit and the wall-time p50 / p99. The file is made in the directory given
(default: the current one), which must be on the disk the store uses. Pin it to the
hub's core:

    taskset -c 0 python3 bench/scripts/fsync_probe.py 2048 [DIR]

docs/benchmarks.md ("What bounds the missed targets", section 2) reports its figures.
"""
import os
import resource
import sys
import tempfile
import time

COMMITS = 2000


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
    # On the disk being measured: /tmp may be memory, where a sync costs nothing.
    directory = sys.argv[2] if len(sys.argv) > 2 else "."

    with tempfile.NamedTemporaryFile(dir=directory) as file:
        fd = file.fileno()
        os.posix_fallocate(fd, 0, COMMITS * size + 4096)
        os.fsync(fd)
        data = b"x" * size
        latencies = []
        before = resource.getrusage(resource.RUSAGE_SELF)
        for i in range(COMMITS):
            start = time.perf_counter()
            os.pwrite(fd, data, i * size)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / COMMITS
    latencies.sort()
    print(
        f"{size} bytes: cpu_us_per_commit {cpu * 1e6:.1f}, "
        f"wall p50 {latencies[COMMITS // 2] * 1e6:.0f} us, "
        f"p99 {latencies[int(COMMITS * 0.99)] * 1e6:.0f} us"
    )


if __name__ == "__main__":
    main()
