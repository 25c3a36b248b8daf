"""Minor page faults and seconds of DreamerV3 updates with and without retained host memory.

Runs updates of the 2023 ``small`` size on the paper's 16 x 64 batch (as
``bench_dreamer_update.py``) in this process and prints, per update, the seconds, the
minor page faults, user and system CPU time and the peak resident size. Compare the
allocator settings in fresh processes (glibc's adaptive default cannot be restored
inside one)::

    python benchmarks/probe_host_memory.py            # glibc's default
    python benchmarks/probe_host_memory.py --retain   # worldmodels.utils.host_memory.retain_freed_memory()
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from bench_dreamer_update import _update_fn
from worldmodels.utils.host_memory import retain_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retain", action="store_true", help="retain freed memory (the training loop's CPU default)")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.retain and not retain_freed_memory():
        raise SystemExit("mallopt is not available here (not Linux with glibc)")
    _, update = _update_fn("cpu", "auto", (16, 64), "dreamer2023_small")
    update()  # warm-up
    for _ in range(args.updates):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        update()
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        print(f"update {seconds:.2f} s  minor faults {after.ru_minflt - before.ru_minflt}  "
              f"user {after.ru_utime - before.ru_utime:.2f} s  system {after.ru_stime - before.ru_stime:.2f} s  "
              f"peak RSS {after.ru_maxrss // 1024} MB", flush=True)


if __name__ == "__main__":
    main()
