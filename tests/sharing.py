"""What the shared-reads tests have in common: a replicated state dict, and the bytes S3 stores and serves.

The tests save a checkpoint, load it on spawned gloo ranks whose S3
requests all pass through the fault proxy, and compare the bytes the store
served for the checkpoint's data objects with the bytes stored.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3StorageWriter
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION, list_keys

SHARE_BOUND = 1.25  # S3 may serve each stored byte at most this many times over with sharing on


def model_state() -> dict[str, Any]:
    """A replicated state dict of about 1.2 MiB, the same on every rank: tensors of several dtypes and a value."""
    generator = torch.Generator().manual_seed(11)
    state: dict[str, Any] = {f"layer{n}.weight": torch.randn(128, 256, generator=generator) for n in range(8)}
    state["embedding"] = torch.randn(1000, 64, generator=generator).to(torch.bfloat16)
    state["counts"] = torch.arange(5000, dtype=torch.int64)
    state["extra"] = {"step": 1234, "note": "replicated"}
    return state


def blank(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict shaped like ``state`` whose values all differ from it."""
    out: dict[str, Any] = {name: torch.full_like(value, 7) for name, value in state.items() if torch.is_tensor(value)}
    out["extra"] = {"step": 0, "note": ""}
    return out


def assert_same(loaded: dict[str, Any], expected: dict[str, Any], rank: int) -> None:
    assert loaded.keys() == expected.keys()
    for name, value in expected.items():
        if torch.is_tensor(value):
            assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), f"rank {rank}: {name}"
        else:
            assert loaded[name] == value, f"rank {rank}: {name}"


def data_bytes_served(proxy: FaultProxy, prefix: str) -> int:
    """Bytes the store sent for GETs of the checkpoint's data objects (not its ``.metadata``)."""
    return sum(r.response_bytes for r in proxy.requests("GET", rf"/{prefix}/.*\.distcp$") if r.status in (200, 206))


def stored_data_bytes(s3: Any, bucket: str, prefix: str) -> int:
    return sum(size for key, size in list_keys(s3, bucket, prefix + "/").items() if key.endswith(".distcp"))


def save_replicated(s3: Any, proxy: FaultProxy, bucket: str, prefix: str, **writer_options: Any) -> tuple[str, int]:
    """Save :func:`model_state` from this process; its URI and stored data bytes, with the proxy's counts cleared."""
    uri = f"s3://{bucket}/{prefix}"
    dcp.save(model_state(), storage_writer=S3StorageWriter(REGION, uri, **writer_options), no_dist=True)
    stored = stored_data_bytes(s3, bucket, prefix)
    proxy.clear()
    return uri, stored
