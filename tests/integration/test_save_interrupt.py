"""Ctrl-C and SIGTERM stop a save within seconds: nothing queued is sent, uploads are aborted, nothing commits.

The save runs in a child process whose shard parts the proxy holds, so
without the interrupt it would not finish for minutes. The signal is sent
once the proxy holds the first part.

The kernel gives a signal sent to a process to any of its threads that does
not block it, and Python runs the handler only in the main thread, once that
thread runs Python code again. So the signal is also delivered to another
thread of the application while the main thread is asleep waiting for the
held parts: the save must still stop within seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import list_keys

pytestmark = pytest.mark.s3

REPO = Path(__file__).resolve().parents[2]

# A process started in the background by a shell without job control (`make test &`,
# `(cmd &)`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt
# handler: the child would never see the Ctrl-C. Give it the signal handling of a
# program started from a terminal, whatever the test run was started from.
_SAVER = """
import faulthandler, signal
faulthandler.register(signal.SIGUSR1)  # where every thread is, if the test finds the child stuck
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
import sys, torch, torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from s3dcp import S3ClientConfig, S3StorageWriter
MIB = 1024 * 1024
state = {name: torch.randn(7 * MIB // 4) for name in ("a", "b", "c")}
config = S3ClientConfig(part_size=5 * MIB, max_concurrency=2)
writer = S3StorageWriter(None, sys.argv[1], config, thread_count=int(sys.argv[2]))
try:
    dcp.save(state, storage_writer=writer)
except CheckpointException as error:
    (raised, _), = error.failures.values()
    print(type(raised).__name__, flush=True)
    raise raised from None
print("saved", flush=True)
"""

# With a signal name as its third argument, the child's main thread does not get the signal:
# a thread of its own takes it (as the kernel may choose), once the test writes a line and the
# main thread is asleep in a wait.
_BYSTANDER = """
import signal, sys, threading
def bystander():
    sys.stdin.readline()
    main = threading.main_thread().ident
    while sys._current_frames()[main].f_code.co_name != "wait":
        threading.Event().wait(0.01)
    signal.pthread_kill(threading.get_ident(), getattr(signal, sys.argv[3]))
if len(sys.argv) > 3:
    threading.Thread(target=bystander, daemon=True).start()
"""


def interrupt_save(
    proxy: FaultProxy, path: str, signum: int, threads: int = 1, to_main_thread: bool = True
) -> tuple[int, str, str, int]:
    """Start the save, send ``signum`` once a part is held; (exit status, stdout, stderr, parts sent).

    ``to_main_thread=False``: another thread of the child takes the signal, once its main thread waits.
    """
    hold = proxy.add_rule("hold", method="PUT", key_pattern=r"__0_\d+\.distcp$", query_contains="partNumber=")
    receiver = [] if to_main_thread else [signal.Signals(signum).name]
    child = subprocess.Popen(
        [sys.executable, "-c", _BYSTANDER + _SAVER, path, str(threads), *receiver],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert hold.hit.wait(120), "the child never reached its first part"
        if to_main_thread:
            child.send_signal(signum)
        else:
            assert child.stdin is not None
            child.stdin.write("now\n")
            child.stdin.flush()
        # the held parts alone would keep an uninterruptible save going for two minutes
        try:
            out, err = child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGUSR1)
            try:
                child.communicate(timeout=5)  # time for the dump; the child is not expected to end
            except subprocess.TimeoutExpired:
                child.kill()
            _, err = child.communicate()
            pytest.fail(f"the save went on for 60 s after the signal; its threads were:\n{err}")
        return child.returncode, out, err, hold.hits
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


def assert_nothing_left_open(s3: Any, bucket: str) -> None:
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert "ckpt/.metadata" not in list_keys(s3, bucket)


@pytest.mark.parametrize(
    ("threads", "to_main_thread"), [(1, True), (3, True), (3, False)], ids=["1-main", "3-main", "3-another"]
)
def test_ctrl_c_stops_a_save_and_aborts_its_uploads(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str, threads: int, to_main_thread: bool
) -> None:
    status, out, err, parts = interrupt_save(proxy, f"s3://{bucket}/ckpt", signal.SIGINT, threads, to_main_thread)
    assert out.split() == ["KeyboardInterrupt"], err
    assert status == -signal.SIGINT, err
    assert parts <= 2  # at most max_concurrency parts were ever sent; the queued ones never were
    assert_nothing_left_open(s3, bucket)


@pytest.mark.parametrize("to_main_thread", [True, False], ids=["main-thread", "another-thread"])
def test_sigterm_stops_a_save_and_aborts_its_uploads(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str, to_main_thread: bool
) -> None:
    status, out, err, parts = interrupt_save(proxy, f"s3://{bucket}/ckpt", signal.SIGTERM, 1, to_main_thread)
    assert out.split() == ["SystemExit"], err
    assert status == 128 + signal.SIGTERM, err
    assert parts <= 2
    assert_nothing_left_open(s3, bucket)
