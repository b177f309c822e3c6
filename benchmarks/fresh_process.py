"""Run a measurement in a spawned process, so its peak memory and imports are its own."""

from __future__ import annotations

import multiprocessing as mp


def measure(fn, *args) -> dict:
    """``fn(*args, queue)`` in a spawned process; what it put on the queue.

    RuntimeError with the exit code when the child dies first (out of memory: -9).
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=(*args, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Exception:  # queue.Empty: the child may have died
            if not proc.is_alive():
                raise RuntimeError(f"{fn.__name__} failed (exit code {proc.exitcode})") from None
    proc.join()
    return result
