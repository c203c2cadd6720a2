"""Run one function in ``W`` worker processes and never hang on a failure.

:func:`run_workers` starts ``W`` processes (``spawn``), one per rank, and waits for all of them. The first
worker that raises (or dies without a word, e.g. killed by the OOM killer) ends the whole run within about a
second: the other workers are terminated (they may be blocked in a collective waiting for the failed rank)
and :class:`~llmeff.errors.LLMEffWorkerError` is raised in the parent with the worker's own error message.
Every multi-process ``llmeff`` command (``llmeff tp``) goes through it.

The function must be importable by name (a module-level function), as ``spawn`` requires.
"""
from __future__ import annotations

import queue
import time
import traceback
from typing import Any, Callable, Sequence

from .errors import LLMEffError, LLMEffWorkerError


def _entry(target: Callable, rank: int, q, args: Sequence) -> None:
    try:
        result = target(rank, *args)
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
        msg = f"{type(exc).__name__}: {exc}"
        tb = None if isinstance(exc, LLMEffError) else traceback.format_exc()
        try:
            q.put(("error", rank, msg, tb))
        finally:
            raise SystemExit(1)
    q.put(("ok", rank, result, None))


def _stop(procs, grace: float = 2.0) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(1.0)


def run_workers(target: Callable, world: int, args: Sequence = (), timeout: float | None = None,
                poll: float = 0.2) -> list[Any]:
    """Run ``target(rank, *args)`` in ``world`` spawned processes; return the results in rank order.

    Args:
        target: a module-level function (picklable); its return value must be picklable too.
        world: number of processes (ranks ``0 .. world - 1``).
        args: extra positional arguments, the same for every rank.
        timeout: seconds for the whole run (None: no limit).
        poll: seconds between checks of the workers' state.

    Raises:
        LLMEffWorkerError: a worker raised (the message is ``"rank R: Type: message"``, with the worker's
            traceback for unexpected errors), exited with a non-zero code, or the run exceeded ``timeout``.
            The other workers are terminated first.
    """
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_entry, args=(target, r, q, tuple(args)), daemon=False) for r in range(world)]
    results: dict[int, Any] = {}
    t0 = time.monotonic()
    try:
        for p in procs:
            p.start()
        while len(results) < world:
            try:
                kind, rank, payload, tb = q.get(timeout=poll)
            except queue.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0)
                        and r not in results]
                if dead:
                    # a worker may have put its error just before exiting: read it once more
                    try:
                        kind, rank, payload, tb = q.get(timeout=poll)
                    except queue.Empty:
                        r, code = dead[0]
                        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                        raise LLMEffWorkerError(f"rank {r} of {world} died ({how}) without reporting an error "
                                                "(out of memory?); the other ranks were stopped") from None
                else:
                    if timeout is not None and time.monotonic() - t0 > timeout:
                        raise LLMEffWorkerError(f"the {world} workers did not finish within {timeout:g} s; stopped "
                                                "them") from None
                    continue
            if kind == "error":
                detail = f"\n--- traceback of rank {rank} ---\n{tb}" if tb else ""
                raise LLMEffWorkerError(f"rank {rank} of {world} failed: {payload}{detail}")
            results[rank] = payload
        for p in procs:
            p.join(10.0)
    finally:
        _stop(procs)
        q.close()
    return [results[r] for r in range(world)]
