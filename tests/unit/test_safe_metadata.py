"""The allow-list unpickler reads every kind of real DCP metadata, and nothing else."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict

from s3dcp import CheckpointDamagedError, UnsafeCheckpointError
from s3dcp._format.metadata import load_metadata


def metadata_bytes_of(state: dict[str, Any], directory: Path) -> bytes:
    """What DCP's own FileSystemWriter writes as .metadata for ``state``."""
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(directory)))
    return (directory / ".metadata").read_bytes()


def assert_reads_like_pickle(data: bytes) -> None:
    safe = load_metadata(data, "test")
    plain = pickle.loads(data)
    assert safe == plain
    assert repr(safe) == repr(plain)


def test_dense_tensors_of_every_dtype_and_plain_values(tmp_path: Path) -> None:
    dtypes = [
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
        torch.complex64,
    ]
    state: dict[str, Any] = {str(d): torch.zeros(3, 2, dtype=d) for d in dtypes}
    state["channels_last"] = torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last)
    state["meta"] = {"step": 3, "betas": (0.9, 0.95), "name": "x", "none": None}
    assert_reads_like_pickle(metadata_bytes_of(state, tmp_path))


def test_model_and_optimizer_state(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    assert_reads_like_pickle(metadata_bytes_of({"model": model_sd, "optim": optim_sd, "step": 1}, tmp_path))


@pytest.fixture
def one_rank_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_dtensor_state(one_rank_group: None, tmp_path: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    state = {
        "sharded": distribute_tensor(torch.randn(8, 4), mesh, [Shard(0)]),
        "replicated": distribute_tensor(torch.randn(3), mesh, [Replicate()]),
    }
    assert_reads_like_pickle(metadata_bytes_of(state, tmp_path / "ckpt"))


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("exit 0",))


@pytest.mark.parametrize(
    "hostile",
    [
        pickle.dumps(_Payload()),
        pickle.dumps({"x": _Payload()}),
        pickle.dumps(torch.nn.Linear(1, 1)),
        b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93.",
    ],
)
def test_anything_that_names_code_is_refused_as_unsafe(hostile: bytes) -> None:
    with pytest.raises(UnsafeCheckpointError, match="s3://b/k/.metadata"):
        load_metadata(hostile, "s3://b/k/.metadata")


def test_metadata_that_does_not_unpickle_is_damaged_not_unsafe(tmp_path: Path) -> None:
    good = metadata_bytes_of({"w": torch.zeros(3)}, tmp_path)
    for broken in (b"not a pickle at all", good[: len(good) // 2], good[:-1], b"", pickle.dumps([1, 2, 3])):
        with pytest.raises(CheckpointDamagedError, match="s3://b/k/.metadata") as raised:
            load_metadata(broken, "s3://b/k/.metadata")
        assert not isinstance(raised.value, UnsafeCheckpointError)
        assert "older checkpoint" in str(raised.value)


def test_sharded_tensor_properties_of_older_torch_load_as_current_ones(tmp_path: Path) -> None:
    from torch.distributed._shard.sharded_tensor import metadata as sharded
    from torch.distributed.checkpoint.metadata import TensorProperties

    metadata = pickle.loads(metadata_bytes_of({"w": torch.zeros(2, 2, dtype=torch.bfloat16)}, tmp_path))
    entry = metadata.state_dict_metadata["w"]
    entry.properties = sharded.TensorProperties(dtype=torch.bfloat16, memory_format=torch.channels_last)
    loaded = load_metadata(pickle.dumps(metadata), "s3://b/k/.metadata")
    properties = loaded.state_dict_metadata["w"].properties
    assert type(properties) is TensorProperties
    assert (properties.dtype, properties.memory_format) == (torch.bfloat16, torch.channels_last)


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("torch.distributed._shard.sharded_tensor.metadata", "ShardMetadata"),
        ("torch.distributed._shard.sharded_tensor.metadata", "field"),
        ("torch.distributed._shard.sharded_tensor.metadata", "ShardedTensorMetadata"),
        # torch's own loader cannot use these (the alias module gives other classes): not admitted
        ("torch.distributed._shard.checkpoint.metadata", "Metadata"),
    ],
)
def test_other_names_of_older_modules_stay_refused(module: str, name: str) -> None:
    hostile = b"\x80\x04\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)])
    hostile += name.encode() + b"\x93)R."
    with pytest.raises(UnsafeCheckpointError, match=name):
        load_metadata(hostile, "s3://b/k/.metadata")
