"""Each private torch name missing in turn: saves and loads still work, bit for bit.

A lookup in :mod:`s3dcp._compat.torch` is forced to miss, as it would with a
torch release that moved the name; the save and the load then take the
plain path and must round-trip exactly as before.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorProperties

from s3dcp import S3StorageReader, S3StorageWriter
from s3dcp._compat import torch as compat
from s3dcp._errors import UnsafeCheckpointError
from s3dcp._format import framing
from tests.conftest import REGION
from tests.helpers import assert_same, blank_like, s3dcp_error
from tests.integration.test_interop import upload_tree
from tests.integration.test_roundtrip import mixed_state_dict

pytestmark = pytest.mark.s3

_FILESYSTEM = "torch.distributed.checkpoint.filesystem"
_EXTENSION = "torch.distributed.checkpoint._extension"


def miss(monkeypatch: pytest.MonkeyPatch, *names: tuple[str, str]) -> None:
    """Make the compat lookup of each ``(module, name)`` find nothing; every other name as before."""
    found: Callable[[str, str], Any] = compat._private

    def lookup(module: str, name: str) -> Any:
        return None if (module, name) in names else found(module, name)

    monkeypatch.setattr(compat, "_private", lookup)


def state_with_bytes() -> dict[str, Any]:
    state = mixed_state_dict()
    state["blob"] = io.BytesIO(pickle.dumps(OrderedDict(a=torch.Size([2, 3])), protocol=2))
    return state


def assert_round_trip(state: dict[str, Any], path: str) -> None:
    """Save ``state``, load it back, and require every value bit for bit (a ``BytesIO`` by its bytes)."""
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path))
    loaded = blank_like(state)
    blobs = {key: value for key, value in state.items() if isinstance(value, io.BytesIO)}
    loaded.update({key: io.BytesIO() for key in blobs})
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    for key, blob in blobs.items():
        assert loaded.pop(key).getvalue() == blob.getvalue(), key
    assert_same({k: v for k, v in state.items() if k not in blobs}, loaded)


def saved_metadata(s3: Any, bucket: str, prefix: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=f"{prefix}/.metadata")["Body"].read())


def test_without_storage_info_saves_with_the_stand_in(
    monkeypatch: pytest.MonkeyPatch, s3_env: Any, s3: Any, bucket: str
) -> None:
    miss(monkeypatch, (_FILESYSTEM, "_StorageInfo"))
    state = mixed_state_dict()
    assert_round_trip(state, f"s3://{bucket}/run")
    assert b"FallbackStorageInfo" in saved_metadata(s3, bucket, "run")


def test_without_dcp_version_records_the_fallback(monkeypatch: pytest.MonkeyPatch, s3_env: Any, bucket: str) -> None:
    miss(monkeypatch, (_FILESYSTEM, "CURRENT_DCP_VERSION"))
    state = mixed_state_dict()
    assert_round_trip(state, f"s3://{bucket}/run")
    reader = S3StorageReader(REGION, f"s3://{bucket}/run")
    assert reader.read_metadata().version == compat.FALLBACK_DCP_VERSION


def test_without_mem_format_encoding_memory_formats_load_as_torch_constants(
    monkeypatch: pytest.MonkeyPatch, s3_env: Any, s3: Any, bucket: str
) -> None:
    """A torch without the enum must pickle the format some other way; here, by the constant's name."""
    miss(monkeypatch, ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"))

    def getstate(self: TensorProperties) -> tuple[Any, ...]:
        name = str(self.memory_format).removeprefix("torch.")
        return (self.dtype, self.layout, self.requires_grad, name, self.pin_memory)

    def setstate(self: TensorProperties, state: tuple[Any, ...]) -> None:
        self.dtype, self.layout, self.requires_grad, name, self.pin_memory = state
        self.memory_format = getattr(torch, name)

    monkeypatch.setattr(TensorProperties, "__getstate__", getstate)
    monkeypatch.setattr(TensorProperties, "__setstate__", setstate)
    state = mixed_state_dict()
    assert_round_trip(state, f"s3://{bucket}/run")
    assert b"_MEM_FORMAT_ENCODING" not in saved_metadata(s3, bucket, "run")


def test_without_rebuild_tensor_v2_tensors_are_written_by_torch_save(
    monkeypatch: pytest.MonkeyPatch, s3_env: Any, bucket: str
) -> None:
    miss(monkeypatch, compat.REBUILD_TENSOR_V2)
    monkeypatch.setattr(framing, "_checked", False)  # the layout is learnt again
    monkeypatch.setattr(framing, "_template", None)
    monkeypatch.setattr(framing, "_framings", {})
    state = mixed_state_dict()
    assert_round_trip(state, f"s3://{bucket}/run")
    assert framing._checked and framing._template is None


def test_without_torchs_allowed_globals_bytes_are_checked_against_the_fixed_list(
    monkeypatch: pytest.MonkeyPatch, s3_env: Any, bucket: str
) -> None:
    miss(monkeypatch, ("torch._weights_only_unpickler", "_get_allowed_globals"))
    state = state_with_bytes()
    assert_round_trip(state, f"s3://{bucket}/run")
    hostile = {"blob": io.BytesIO(pickle.dumps(OrderedDict(a=print), protocol=2))}
    with pytest.raises(CheckpointException) as raised:
        assert_round_trip(hostile, f"s3://{bucket}/hostile")
    assert isinstance(s3dcp_error(raised.value), UnsafeCheckpointError)


def test_without_the_dcp_frame_check_reads_are_direct_calls(
    monkeypatch: pytest.MonkeyPatch, s3_env: Any, bucket: str
) -> None:
    monkeypatch.setattr(compat, "_DCP_LOADER", "torch.distributed.checkpoint.moved_loader")
    state = mixed_state_dict()
    assert_round_trip(state, f"s3://{bucket}/run")


class _StandIn:
    """Shaped like a stream transform, for a torch that has none to make."""

    def get_descriptor(self) -> str:
        return "stream.zstd/1"

    def transform_to(self, output: Any) -> Any:
        return output

    def transform_from(self, input: Any) -> Any:
        return input


def test_without_stream_transforms_plain_checkpoints_still_work(
    monkeypatch: pytest.MonkeyPatch, s3_env: Any, bucket: str
) -> None:
    """On a torch without ``_extension`` (torch 2.6) as on one where the lookup misses."""
    miss(monkeypatch, (_EXTENSION, "ExtensionRegistry"), (_EXTENSION, "StreamTransformExtension"))
    state = mixed_state_dict()
    assert_round_trip(state, f"s3://{bucket}/run")
    assert S3StorageWriter(REGION, f"s3://{bucket}/other", extensions=[]).extensions == ()
    with pytest.raises(TypeError, match="which this torch does not provide") as raised:
        S3StorageWriter(REGION, f"s3://{bucket}/other", extensions=[_StandIn()])
    assert f"torch {torch.__version__} has no torch.distributed.checkpoint._extension" in str(raised.value)


def test_without_stream_transforms_a_transformed_checkpoint_is_refused(
    monkeypatch: pytest.MonkeyPatch, s3: Any, s3_env: Any, bucket: str, tmp_path: Path
) -> None:
    """A checkpoint whose items record transforms (as a newer torch's zstd save does) fails to load, clearly."""
    dcp.save({"w": torch.zeros(64)}, storage_writer=dcp.FileSystemWriter(tmp_path, sync_files=False))
    metadata = pickle.loads((tmp_path / ".metadata").read_bytes())
    for info in metadata.storage_data.values():
        info.transform_descriptors = ["stream.zstd/1"]
    (tmp_path / ".metadata").write_bytes(pickle.dumps(metadata))
    upload_tree(s3, tmp_path, bucket, "zstd")
    miss(monkeypatch, (_EXTENSION, "ExtensionRegistry"), (_EXTENSION, "StreamTransformExtension"))
    with pytest.raises(CheckpointException) as raised:
        dcp.load({"w": torch.ones(64)}, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/zstd"))
    error = s3dcp_error(raised.value)
    assert isinstance(error, UnsafeCheckpointError)
    assert "this torch does not provide DCP stream transforms" in str(error)
