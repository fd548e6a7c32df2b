"""Small helpers shared by tests: constants, state dicts, exact comparisons, the AWS environment."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint import staging, state_dict_saver

from s3dcp import S3DCPError, find_s3dcp_error
from s3dcp._cli import main
from tests.conftest import AWS_VARIABLES

MIB = 1024 * 1024

# quick retries, for tests that provoke them: S3ClientConfig(**FAST_RETRIES), with other options as needed
FAST_RETRIES: dict[str, float] = {"retry_initial_backoff": 0.01, "retry_max_backoff": 0.05}


def aws_env() -> dict[str, str]:
    """This process's AWS variables (the test server's, under ``s3_env``), for ranks started by ``run_ranks``."""
    return {name: os.environ[name] for name in AWS_VARIABLES if name in os.environ}


# -- torch features some tests need ---------------------------------------------------
# Each marker skips only on a torch without the feature, naming it and the torch that added it.
HAS_STREAM_TRANSFORMS = importlib.util.find_spec("torch.distributed.checkpoint._extension") is not None
HAS_ASYNC_EXECUTOR_CHOICE = hasattr(state_dict_saver, "AsyncCheckpointerType")
ASYNC_SAVE_COPIES_CPU_STATE = hasattr(staging, "DefaultStager")  # torch 2.6 copies only what is not on CPU yet

needs_stream_transforms = pytest.mark.skipif(
    not HAS_STREAM_TRANSFORMS,
    reason=f"DCP stream transforms (torch.distributed.checkpoint._extension) arrived in torch 2.7; "
    f"torch {torch.__version__} has none",
)
needs_process_async_save = pytest.mark.skipif(
    not HAS_ASYNC_EXECUTOR_CHOICE,
    reason=f"dcp.async_save's process executor (AsyncCheckpointerType.PROCESS) arrived in a newer torch; "
    f"torch {torch.__version__} saves in a thread only",
)
needs_async_save_copy = pytest.mark.skipif(
    not ASYNC_SAVE_COPIES_CPU_STATE,
    reason="dcp.async_save copying tensors already on CPU before it returns (DefaultStager) arrived in a newer "
    f"torch; torch {torch.__version__}'s async_save (FileSystemWriter's too) writes them as they are when written",
)
needs_fsdp2_on_cpu = pytest.mark.skipif(
    not hasattr(torch.cpu.Stream, "record_event"),
    reason="FSDP2 (fully_shard) on a CPU device mesh needs torch.cpu.Stream.record_event, which arrived in a "
    f"newer torch; torch {torch.__version__}'s FSDP2 fails on CPU",
)


def async_save_options(executor: str) -> dict[str, Any]:
    """``dcp.async_save`` keywords for ``executor`` ("thread" or "process").

    A torch without ``AsyncCheckpointerType`` always saves in a thread, so
    "thread" needs no keyword there; "process" tests carry
    ``needs_process_async_save``.
    """
    if HAS_ASYNC_EXECUTOR_CHOICE:
        return {"async_checkpointer_type": state_dict_saver.AsyncCheckpointerType(executor)}
    if executor != "thread":
        raise ValueError(f"torch {torch.__version__} has no {executor!r} executor for dcp.async_save")
    return {}


def assert_same(expected: Any, actual: Any, path: str = "") -> None:
    """Bit-exact comparison of nested state dicts (dtype, shape and bytes)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), path
        assert actual.dtype == expected.dtype, path
        assert actual.shape == expected.shape, path
        a = expected.contiguous().view(torch.uint8) if expected.numel() and expected.dim() else expected
        b = actual.contiguous().view(torch.uint8) if actual.numel() and actual.dim() else actual
        assert torch.equal(a, b), path
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), path
        for key in expected:
            assert_same(expected[key], actual[key], f"{path}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), path
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{path}[{i}]")
    else:
        assert actual == expected and type(actual) is type(expected), path


def blank_like(state: Any) -> Any:
    """Same structure, tensors of the same shape/dtype filled with a sentinel."""
    if isinstance(state, torch.Tensor):
        blank = torch.empty_like(state.contiguous())
        if blank.dtype == torch.bool:
            blank.fill_(False)
        elif blank.numel():
            blank.fill_(7)
        return blank
    if isinstance(state, dict):
        return {k: blank_like(v) for k, v in state.items()}
    return None if not isinstance(state, (list, tuple)) else type(state)(blank_like(v) for v in state)


def s3dcp_error(raised: BaseException) -> S3DCPError:
    """The s3dcp error behind what DCP raised; fails the test if there is none."""
    found = find_s3dcp_error(raised)
    assert found is not None, f"no s3dcp error inside {raised!r}"
    return found


@contextlib.contextmanager
def serve_on_loopback(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 and a free port in a thread; yields ``http://127.0.0.1:PORT``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the s3dcp command in this process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
