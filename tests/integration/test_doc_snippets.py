"""Every fenced ``python`` block in README.md and docs/ runs as written, against a local S3 server.

Each block runs on its own, in a fresh namespace, in an empty working
directory, with the AWS settings pointing at moto's S3 server (reset for
every block, with the bucket ``bucket`` the examples use) and the variables
torchrun sets for a single rank, so the FSDP2 example starts its gloo group
as it would under ``torchrun --nproc-per-node=1``. A block that stops
working fails here, with the file and line it starts at.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import torch.distributed as dist

from s3dcp_testkit.moto_server import MotoServer
from tests.conftest import use_loopback_store

pytestmark = pytest.mark.s3

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(line the block's code starts at, its code) for each fenced python block of ``page``."""
    text = page.read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in FENCE.finditer(text)]


SNIPPETS = [
    pytest.param(f"{page.relative_to(ROOT)}:{line}", code, id=f"{page.relative_to(ROOT)}:{line}")
    for page in PAGES
    for line, code in python_blocks(page)
]


@pytest.fixture(scope="module")
def server() -> Iterator[MotoServer]:
    with MotoServer() as started:
        yield started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_pages_hold_snippets() -> None:
    """The collection above found the blocks (a changed fence would otherwise test nothing)."""
    assert len(SNIPPETS) >= 10
    assert {page.name for page in PAGES} >= {"README.md", "configuration.md", "migrating.md"}


@pytest.mark.parametrize(("where", "code"), SNIPPETS)
def test_the_snippet_runs_as_written(
    where: str, code: str, server: MotoServer, clean_aws_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.reset()
    use_loopback_store(clean_aws_env, server.endpoint_url)
    boto3.client("s3").create_bucket(Bucket="bucket")
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile("\n" * (int(where.rsplit(":", 1)[1]) - 1) + code, where, "exec"), {"__name__": "__main__"})  # noqa: S102 - our own documentation
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
