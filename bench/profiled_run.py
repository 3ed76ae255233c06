"""`syncer ARGS` under cProfile, in this process, with stamps for the moments it logs nothing about.

    python bench/profiled_run.py STATS_FILE -- run --once

Prints ``bench-stamp interpreter T`` first (the interpreter is up), ``bench-stamp returned T`` when
syncer's main() returns and ``bench-stamp dumped T`` once the profile is written, T being
``time.monotonic()``: the measuring process (bench/wholeprocess.py) reads them on the same clock.
The profile covers this process's main thread, from the import of syncer's CLI to main()'s return.
"""

from __future__ import annotations

import sys
import time


def stamp(name: str) -> None:
    print(f"bench-stamp {name} {time.monotonic():.6f}", file=sys.stderr, flush=True)


def main() -> int:
    stamp("interpreter")
    import cProfile

    stats_file, separator, *args = sys.argv[1:]
    if separator != "--":
        raise SystemExit(__doc__)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        from syncer.cli import entry as syncer_main

        code = syncer_main(args)
    finally:
        profiler.disable()
        stamp("returned")
        profiler.dump_stats(stats_file)
        stamp("dumped")
    return code


if __name__ == "__main__":
    sys.exit(main())
