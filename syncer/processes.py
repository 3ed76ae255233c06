"""`syncer run --processes N`: N worker processes on one machine, each with its share of the CPU.

Two processes of one torch thread each encode more texts per second than one process of two threads
(measured on this project's 2-core machine). Each child is an ordinary `syncer run`: they share the
queues through SKIP LOCKED and leases like workers on different machines, apply (if allowed) one at
a time and find it done. The parent only starts them, passes SIGTERM/SIGINT on, and waits.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

log = logging.getLogger(__name__)

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def count(wanted: str, provider: str) -> int:
    """``auto``: a process per CPU for a local model (threads already overlap a remote provider's requests)."""
    if wanted != "auto":
        return max(1, int(wanted))
    return (os.cpu_count() or 1) if provider == "sentence-transformers" else 1


def run(processes: int, args: list[str]) -> int:
    """Run ``processes`` children of ``syncer run <args>``; their worst exit code."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = os.environ | {name: str(threads) for name in THREAD_VARIABLES}
    children = [
        subprocess.Popen([sys.executable, "-m", "syncer", "run", "--processes", "1", *args], env=env)
        for _ in range(processes)
    ]
    log.info("started %d worker processes of %d threads each", processes, threads)

    def forward(signum: int, _: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    return max(child.wait() for child in children)
