"""SIGTERM during a save's writes becomes SystemExit(143), only over the default action, and only for the block."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

from s3dcp._save import sigterm_raises as _sigterm_raises


def test_sigterm_raises_system_exit_inside_the_block_and_the_default_returns() -> None:
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with pytest.raises(SystemExit) as raised:
        with _sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(60)  # the handler raises here, at the latest
    assert raised.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_an_application_handler_is_left_alone() -> None:
    seen: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with _sigterm_raises():
            assert signal.getsignal(signal.SIGTERM) is handler
            os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_other_threads_change_nothing() -> None:
    inside: list[Any] = []

    def run() -> None:
        with _sigterm_raises():
            inside.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert inside == [signal.SIG_DFL]
