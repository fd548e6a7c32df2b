"""Run a function on several real ranks: spawned processes in one gloo process group.

Each rank is a fresh Python process (``spawn``) that joins a ``gloo`` group
on 127.0.0.1 and a free port (through the variables torchrun sets), sets the environment it is given (endpoint,
credentials) before it touches S3, runs ``fn(rank, world_size, *args)``,
and leaves the group. A failure on any rank fails the caller with that
rank's traceback; a group that is still running at the deadline is killed.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp

from s3dcp_testkit.ports import free_port

DEADLINE_S = 240.0

# set for each test by tests/conftest.py: whether it carries @pytest.mark.ranks, which
# `make test-fast` deselects; run_ranks refuses to run for a test without it
marked_for_ranks = False


def _rank_main(
    rank: int, world_size: int, port: int, env: Mapping[str, str], fn: Callable[..., None], args: tuple[Any, ...]
) -> None:
    os.environ.update(env)
    # the variables torchrun sets; DCP's process-based async save reads them too
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    try:
        fn(rank, world_size, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    _exit_cleanly()


def _exit_cleanly() -> None:
    """End a rank that finished its work: wait for its threads as Python would, then exit at once.

    Interpreter finalization in a rank process that used gloo (and DTensor,
    or DCP's async save) now and then tears down torch's C++ threads in an
    order that aborts ("terminate called without an active exception")
    after everything the rank did has succeeded. Skipping finalization keeps
    that from failing a test whose ranks all did their work; a rank that
    fails still raises, and its traceback reaches the caller as before.
    """
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()  # as interpreter exit would (a tiered upload thread is a daemon: ranks wait themselves)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(world_size: int, fn: Callable[..., None], *args: Any, env: Mapping[str, str] | None = None) -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; raise if any rank fails.

    ``fn`` and ``args`` must pickle (a module-level function), as for any
    spawned process. ``env`` is applied in each rank before ``fn`` runs.
    """
    if not marked_for_ranks:
        raise RuntimeError("a test that starts ranks must be marked @pytest.mark.ranks (make test-fast skips those)")
    context = mp.start_processes(
        _rank_main,
        args=(world_size, free_port(), dict(env or {}), fn, args),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise TimeoutError(f"{world_size} ranks still running after {DEADLINE_S:.0f}s")
