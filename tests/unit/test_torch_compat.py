"""The private torch names s3dcp uses still have the shape it expects."""

from __future__ import annotations

import dataclasses
import pickle

import torch.distributed.checkpoint.state_dict_loader as loader_module

from s3dcp._torch_compat import DCP_VERSION, StorageInfo, called_from_dcp_load, weights_only_global_names


def test_storage_info_fields_and_pickle() -> None:
    names = [f.name for f in dataclasses.fields(StorageInfo)]
    assert names[:3] == ["relative_path", "offset", "length"]
    info = StorageInfo("__0_0.distcp", 10, 20)
    assert pickle.loads(pickle.dumps(info)) == info
    assert isinstance(DCP_VERSION, str)


def test_dcp_load_step_is_where_we_expect_it() -> None:
    """``called_from_dcp_load`` looks for a ``local_step`` in torch's loader."""
    source = open(loader_module.__file__).read()
    assert "def local_step" in source and "storage_reader.read_metadata()" in source

    def read_metadata() -> bool:
        return called_from_dcp_load()

    assert read_metadata() is False


def test_weights_only_global_names_follow_torch_and_the_user() -> None:
    import io

    import torch

    names = weights_only_global_names()
    assert "torch._utils._rebuild_tensor_v2" in names and "collections.OrderedDict" in names
    assert "_io.BytesIO" not in names
    with torch.serialization.safe_globals([io.BytesIO]):
        assert "_io.BytesIO" in weights_only_global_names()


def test_extension_registry_knows_zstd_and_refuses_unknown_names() -> None:
    from s3dcp._torch_compat import extension_registry

    registry = extension_registry()
    (zstd,) = registry.from_descriptor_list(["stream.zstd/1"])
    assert zstd.get_descriptor() == "stream.zstd/1"
    try:
        registry.from_descriptor_list(["stream.unknown/1"])
    except ValueError:
        return
    raise AssertionError("an unknown descriptor must raise ValueError")
