"""Parts sent straight from tensor memory arrive whole, even where botocore would drop them.

s3dcp carries a ``memoryview`` body past botocore's validator through the
request context (see :mod:`s3dcp._compat.botocore`). Here a botocore that
does not share that context is simulated: the check each client makes when
created must catch it, so parts are copied into bytes and none goes empty.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3ClientConfig, S3StorageReader, S3StorageWriter
from s3dcp._s3.upload import ObjectUpload
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.botocore_doubles import unshared_context
from tests.conftest import REGION
from tests.helpers import MIB, assert_same, blank_like

pytestmark = pytest.mark.s3


@pytest.mark.parametrize("shared", [True, False], ids=["context-shared", "context-not-shared"])
def test_parts_sent_from_tensor_memory_round_trip_bit_exact(
    proxied_env: Any, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, bucket: str, shared: bool
) -> None:
    views = 0
    send_view = ObjectUpload._send_view

    def counted(self: ObjectUpload, part: memoryview, also: Any) -> int:
        nonlocal views
        views += 1
        return send_view(self, part, also)

    monkeypatch.setattr(ObjectUpload, "_send_view", counted)
    state = {"w": torch.randn(3 * MIB, generator=torch.Generator().manual_seed(9))}  # 12 MiB: 3 parts
    path = f"s3://{bucket}/views"
    config = S3ClientConfig(part_size=5 * MIB)
    with monkeypatch.context() as botocore_patch:  # undone before the bucket fixture empties the bucket
        if not shared:
            unshared_context(botocore_patch)
        dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config))
    parts = proxy.requests("PUT", r"distcp$")
    assert views >= 1  # the memoryview path was taken
    assert len(parts) == 3 and all(record.request_bytes > 0 for record in parts)
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
    assert_same(state, loaded)
