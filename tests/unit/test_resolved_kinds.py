"""A planner that resolves an item to the wrong kind of data is refused, naming the item."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.planner_helpers import (
    _create_write_item_for_bytesio,
    _create_write_item_for_tensor,
)

from s3dcp._format.shard import write_items
from tests.helpers import needs_stream_transforms


class _Wrong:
    """Resolves every item to the other kind."""

    def resolve_data(self, item: Any) -> Any:
        return torch.ones(2) if item.index.fqn == "blob" else io.BytesIO(b"x")


def _transforms(compress: bool) -> list[Any]:
    if not compress:
        return []
    from torch.distributed.checkpoint._extension import ZStandard

    return [ZStandard()]


@pytest.mark.parametrize("compress", [False, pytest.param(True, marks=needs_stream_transforms)], ids=["plain", "zstd"])
@pytest.mark.parametrize(
    ("item", "said"),
    [
        (_create_write_item_for_bytesio("blob", io.BytesIO(b"x")), "BYTE_IO item 'blob' resolved to Tensor"),
        (_create_write_item_for_tensor("w", torch.ones(2)), "tensor item 'w' resolved to BytesIO"),
    ],
    ids=["bytes", "tensor"],
)
def test_wrong_kind_is_refused(item: Any, said: str, compress: bool) -> None:
    with pytest.raises(TypeError, match=said):
        write_items(io.BytesIO(), [item], _Wrong(), "__0_0.distcp", extensions=_transforms(compress))  # type: ignore[arg-type]
