"""The private torch names s3dcp uses still have the shape it expects, and each lookup can miss."""

from __future__ import annotations

import dataclasses
import logging
import pickle
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint.state_dict_loader as loader_module
from torch.distributed.checkpoint import filesystem

from s3dcp._compat import torch as compat
from s3dcp._compat.torch import (
    FallbackStorageInfo,
    called_from_dcp_load,
    dcp_version,
    extension_registry,
    mem_format_encoding,
    rebuild_tensor_v2,
    storage_info_class,
    storage_rank,
    stream_transform_class,
    weights_only_global_names,
)
from tests.helpers import HAS_STREAM_TRANSFORMS, needs_stream_transforms


def test_storage_info_is_torchs_and_the_fallback_has_its_shape() -> None:
    assert storage_info_class() is filesystem._StorageInfo
    names = [f.name for f in dataclasses.fields(filesystem._StorageInfo)]
    fallback = dataclasses.fields(FallbackStorageInfo)
    # the fallback has the newest torch's fields; an older torch (2.6) lacks the stream transforms'
    assert names == [f.name for f in fallback][: len(names)]
    assert names == [f.name for f in fallback] or not HAS_STREAM_TRANSFORMS
    assert all(f.default is None for f in fallback[len(names) :])  # unset, they are left out when pickled
    for cls in (filesystem._StorageInfo, FallbackStorageInfo):
        info = cls("__0_0.distcp", 10, 20)
        assert pickle.loads(pickle.dumps(info)) == info
        assert info.__getstate__() == filesystem._StorageInfo("__0_0.distcp", 10, 20).__getstate__()


def test_dcp_version_is_torchs_or_the_fallback() -> None:
    """``CURRENT_DCP_VERSION`` came with the stream transforms; an older torch records no version."""
    if hasattr(filesystem, "CURRENT_DCP_VERSION"):
        assert dcp_version() == filesystem.CURRENT_DCP_VERSION
    else:
        assert not HAS_STREAM_TRANSFORMS and dcp_version() == compat.FALLBACK_DCP_VERSION


def test_each_name_is_found_in_this_torch() -> None:
    assert rebuild_tensor_v2() is torch._utils._rebuild_tensor_v2
    encoding = mem_format_encoding()
    assert encoding is not None and encoding.__name__ == "_MEM_FORMAT_ENCODING"
    assert (stream_transform_class() is not None) == HAS_STREAM_TRANSFORMS
    assert (extension_registry() is not None) == HAS_STREAM_TRANSFORMS


def test_storage_rank_is_dcps_or_found_when_dcp_passes_none() -> None:
    """Newer DCP passes ``rank=``; torch 2.6's passes none, and one process is rank 0."""
    assert storage_rank(3) == 3 and storage_rank(0) == 0
    assert not torch.distributed.is_initialized()
    assert storage_rank(None) == 0


def test_dcp_load_step_is_where_we_expect_it() -> None:
    """``called_from_dcp_load`` looks for a ``local_step`` in torch's loader."""
    source = open(loader_module.__file__).read()
    assert "def local_step" in source and "storage_reader.read_metadata()" in source

    def read_metadata() -> bool:
        return called_from_dcp_load()

    assert read_metadata() is False
    assert called_from_dcp_load(depth=10_000) is False  # no such frame: a direct call


def test_weights_only_global_names_follow_torch_and_the_user() -> None:
    import io

    names = weights_only_global_names()
    assert "torch._utils._rebuild_tensor_v2" in names and "collections.OrderedDict" in names
    assert "_io.BytesIO" not in names
    with torch.serialization.safe_globals([io.BytesIO, (bytes, "custom.name")]):
        assert {"_io.BytesIO", "custom.name"} <= weights_only_global_names()


def test_weights_only_fallback_is_a_subset_of_torchs_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    torchs = weights_only_global_names()
    monkeypatch.setattr(compat, "_private", lambda module, name: None)
    fallback = weights_only_global_names()
    assert "torch._utils._rebuild_tensor_v2" in fallback and "torch.float32" in fallback
    metadata_classes = {name for name in fallback if name.startswith("torch.distributed.checkpoint.")}
    # the fallback admits every dtype of this torch; torch 2.6 leaves its sub-byte integers out
    # (torch.uint1..uint7, int1..int7), a newer torch lists them all
    unlisted = set(compat._dtype_names()) - torchs
    assert unlisted <= {f"torch.{sign}int{bits}" for sign in ("u", "") for bits in range(1, 8)}
    assert fallback - metadata_classes - unlisted <= torchs


@needs_stream_transforms
def test_extension_registry_knows_zstd_and_refuses_unknown_names() -> None:
    registry = extension_registry()
    (zstd,) = registry.from_descriptor_list(["stream.zstd/1"])
    assert zstd.get_descriptor() == "stream.zstd/1"
    with pytest.raises(ValueError):
        registry.from_descriptor_list(["stream.unknown/1"])


def test_a_missing_name_is_none_and_logged_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3dcp._compat import _missing

    monkeypatch.setattr(_missing, "_reported", set())
    caplog.set_level(logging.DEBUG, logger="s3dcp")
    for _ in range(2):
        assert compat._private("torch", "_no_such_name_for_this_test") is None
        assert compat._private("torch._no_such_module_for_this_test", "x") is None
    logged = [r.getMessage() for r in caplog.records if "_no_such_" in r.getMessage()]
    assert len(logged) == 2


_PRIVATE_NAMES = [
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint.filesystem", "CURRENT_DCP_VERSION"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._weights_only_unpickler", "_get_allowed_globals"),
    ("torch.distributed.checkpoint._extension", "ExtensionRegistry"),
    ("torch.distributed.checkpoint._extension", "StreamTransformExtension"),
]

_IMPORT_WITHOUT = """
import importlib, sys
for spec in sys.argv[1:]:
    module, _, name = spec.rpartition(".")
    if hasattr(importlib.import_module(module), name):  # an older torch may lack it already
        delattr(importlib.import_module(module), name)
sys.modules["torch.distributed.checkpoint._extension"] = None  # import fails from here on
import s3dcp, s3dcp._writer, s3dcp._reader, s3dcp._tiered.writer, s3dcp._tiered.reader, s3dcp._format.metadata, s3dcp._format.archive_writer, s3dcp._format.framing, s3dcp._format.archive, s3dcp._format.plain_data
from s3dcp._compat import torch as compat
assert compat.storage_info_class() is compat.FallbackStorageInfo
assert compat.extension_registry() is None and compat.rebuild_tensor_v2() is None
print("ok")
"""


def test_s3dcp_imports_with_every_private_name_missing() -> None:
    """One interpreter, every name deleted (and ``_extension`` unimportable) before ``import s3dcp``."""
    names = [f"{module}.{name}" for module, name in _PRIVATE_NAMES if "_extension" not in module]
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_WITHOUT, *names], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
