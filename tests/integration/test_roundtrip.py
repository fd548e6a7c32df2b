"""Save and load through DCP against a real S3 server, bit for bit."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3ClientConfig, S3StorageReader, S3StorageWriter
from tests.conftest import REGION, list_keys
from tests.helpers import assert_same, blank_like

pytestmark = pytest.mark.s3


def mixed_state_dict() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 48, generator=g)
    return {
        "float32": torch.randn(128, 64, generator=g),
        "bfloat16": torch.randn(33, 7, generator=g).to(torch.bfloat16),
        "float16": torch.randn(5, 5, 5, generator=g).to(torch.float16),
        "float64": torch.randn(17, generator=g, dtype=torch.float64),
        "int64": torch.randint(-(2**62), 2**62, (50,), generator=g),
        "int8": torch.randint(-128, 127, (300,), generator=g, dtype=torch.int8),
        "uint8": torch.randint(0, 255, (4, 4), generator=g, dtype=torch.uint8),
        "bool": torch.rand(99, generator=g) > 0.5,
        "scalar": torch.tensor(3.25),
        "empty": torch.empty(0, 4),
        "transposed": base.t(),
        "strided_view": base[::3, 5:20],
        "slice_of_big": torch.randn(10_000, generator=g)[100:110],
        "nested": {"weights": [torch.ones(3), torch.zeros(2, 2)], "step": 12},
        "step": 1000,
        "lr": 3e-4,
        "name": "run-7 ✓",
        "flags": {"ema": True, "betas": (0.9, 0.95), "none": None},
        "raw": b"\x00\x01 raw bytes \xff",
    }


def roundtrip(state: dict[str, Any], path: str, **writer_kwargs: Any) -> dict[str, Any]:
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, **writer_kwargs))
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    return loaded


def test_every_dtype_and_value_kind_round_trips_bit_exact(s3_env: Any, bucket: str) -> None:
    state = mixed_state_dict()
    loaded = roundtrip(state, f"s3://{bucket}/run/step_1")
    assert_same(state, loaded)


def test_special_float_values_survive(s3_env: Any, bucket: str) -> None:
    state = {"x": torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45])}
    loaded = roundtrip(state, f"s3://{bucket}/ckpt")
    assert_same(state, loaded)


def test_default_key_layout_matches_filesystem_writer(s3_env: Any, s3: Any, bucket: str) -> None:
    roundtrip({"a": torch.ones(4), "b": 5}, f"s3://{bucket}/run-7/step_1000")
    assert sorted(list_keys(s3, bucket)) == [
        "run-7/step_1000/.metadata",
        "run-7/step_1000/__0_0.distcp",
    ]


def test_thread_count_splits_a_rank_into_balanced_objects(s3_env: Any, s3: Any, bucket: str) -> None:
    state = {f"t{i}": torch.full((1000 * (i + 1),), float(i)) for i in range(8)}
    state["meta"] = {"epoch": 3}
    loaded = roundtrip(state, f"s3://{bucket}/ckpt", thread_count=3)
    assert_same(state, loaded)
    shards = {k: v for k, v in list_keys(s3, bucket).items() if k.endswith(".distcp")}
    assert sorted(shards) == [f"ckpt/__0_{i}.distcp" for i in range(3)]
    sizes = sorted(shards.values())
    assert sizes[-1] < 2 * sizes[0]


def test_large_tensor_goes_up_in_parts_and_leaves_no_open_upload(s3_env: Any, s3: Any, bucket: str) -> None:
    config = S3ClientConfig(part_size=5 * 1024 * 1024, max_concurrency=3)
    state = {"big": torch.randn(3 * 1024 * 1024), "small": torch.ones(3)}  # 12 MiB: 3 parts
    path = f"s3://{bucket}/mp"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config))
    head = s3.head_object(Bucket=bucket, Key="mp/__0_0.distcp")
    assert head["ETag"].strip('"').endswith("-3")
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
    assert_same(state, loaded)


def test_partial_load_reads_only_requested_keys(s3_env: Any, bucket: str) -> None:
    state = {"model": {"w": torch.randn(16, 16)}, "optim": {"m": torch.randn(16, 16)}}
    path = f"s3://{bucket}/partial"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path))
    loaded = {"model": {"w": torch.zeros(16, 16)}}
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert_same(state["model"], loaded["model"])


def test_checkpoint_id_reset_switches_paths(s3_env: Any, s3: Any, bucket: str) -> None:
    writer = S3StorageWriter(REGION, f"s3://{bucket}/unused")
    reader = S3StorageReader(REGION, f"s3://{bucket}/unused")
    for step in (1, 2):
        dcp.save({"step": torch.tensor(step)}, checkpoint_id=f"s3://{bucket}/run/step_{step}", storage_writer=writer)
    assert writer.checkpoint_id == f"s3://{bucket}/run/step_2"
    for step in (1, 2):
        loaded = {"step": torch.tensor(0)}
        dcp.load(loaded, checkpoint_id=f"s3://{bucket}/run/step_{step}", storage_reader=reader)
        assert loaded["step"].item() == step
    assert not any(k.startswith("unused") for k in list_keys(s3, bucket))


def test_writer_and_reader_survive_pickling(s3_env: Any, bucket: str) -> None:
    path = f"s3://{bucket}/pickled"
    writer = pickle.loads(pickle.dumps(S3StorageWriter(REGION, path, thread_count=2)))
    state = {"a": torch.arange(100), "b": torch.randn(10)}
    dcp.save(state, storage_writer=writer)
    reader = pickle.loads(pickle.dumps(S3StorageReader(REGION, path)))
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=reader)
    assert_same(state, loaded)


def test_async_save_with_thread_executor(s3_env: Any, bucket: str) -> None:
    path = f"s3://{bucket}/async"
    state = {"w": torch.randn(256, 256), "step": 9}
    future = dcp.async_save(state, storage_writer=S3StorageWriter(REGION, path))
    future.result(timeout=120)
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert_same(state, loaded)


def test_overwrite_true_replaces_a_complete_checkpoint(s3_env: Any, bucket: str) -> None:
    path = f"s3://{bucket}/over"
    dcp.save({"w": torch.zeros(8)}, storage_writer=S3StorageWriter(REGION, path))
    dcp.save({"w": torch.ones(8)}, storage_writer=S3StorageWriter(REGION, path, overwrite=True))
    loaded = {"w": torch.full((8,), 5.0)}
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert torch.equal(loaded["w"], torch.ones(8))


def test_explicit_config_works_without_any_environment(
    clean_aws_env: Any, s3_server: Any, bucket: str, tmp_path: Path
) -> None:
    """Endpoint from the config object; credentials from a named profile."""
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[ckpt]\naws_access_key_id = {s3_server.access_key}\naws_secret_access_key = {s3_server.secret_key}\n"
    )
    clean_aws_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    if s3_server.ca_bundle:
        clean_aws_env.setenv("AWS_CA_BUNDLE", s3_server.ca_bundle)
    config = S3ClientConfig(endpoint_url=s3_server.endpoint_url, profile="ckpt", force_path_style=True)
    path = f"s3://{bucket}/cfg"
    state = {"w": torch.randn(4, 4)}
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config))
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
    assert_same(state, loaded)


def test_aws_profile_variable_selects_credentials(
    clean_aws_env: Any, s3_server: Any, bucket: str, tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[other]\naws_access_key_id = {s3_server.access_key}\naws_secret_access_key = {s3_server.secret_key}\n"
    )
    clean_aws_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    clean_aws_env.setenv("AWS_PROFILE", "other")
    clean_aws_env.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    clean_aws_env.setenv("AWS_DEFAULT_REGION", REGION)
    if s3_server.ca_bundle:
        clean_aws_env.setenv("AWS_CA_BUNDLE", s3_server.ca_bundle)
    path = f"s3://{bucket}/profile"
    state = {"w": torch.randn(3)}
    dcp.save(state, storage_writer=S3StorageWriter(None, path))
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(None, path))
    assert_same(state, loaded)


def _save_in_child(writer: S3StorageWriter, queue: Any) -> None:
    try:
        dcp.save({"w": torch.arange(16.0), "pid": 1}, storage_writer=writer)
        queue.put("ok")
    except BaseException as err:  # report anything to the parent, which fails the test
        queue.put(repr(err))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_writer_works_in_a_child_process(s3_env: Any, bucket: str, method: str) -> None:
    """The client is per process: a forked child must not reuse the parent's connections."""
    import multiprocessing

    path = f"s3://{bucket}/child-{method}"
    writer = S3StorageWriter(REGION, path)
    dcp.save({"warm": torch.ones(1)}, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/warm"))
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=_save_in_child, args=(writer, queue))
    child.start()
    result = queue.get(timeout=120)
    child.join(timeout=60)
    assert result == "ok"
    loaded = {"w": torch.zeros(16), "pid": 0}
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert torch.equal(loaded["w"], torch.arange(16.0)) and loaded["pid"] == 1
