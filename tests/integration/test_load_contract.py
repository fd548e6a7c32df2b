"""What DCP's load path expects of a storage layer: the caller's modes, and paired planner calls."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import ReadItem

import s3dcp._format.in_place
from s3dcp import S3ClientConfig, S3StorageReader, S3StorageWriter, TieredStorageReader, TieredStorageWriter
from tests.conftest import REGION
from tests.helpers import assert_same, blank_like

pytestmark = pytest.mark.s3

KIB = 1024
# in place (>= 64 KiB) and copied tensors, sharing GETs (coalesced) or each with its own
CONFIGS = [S3ClientConfig(max_concurrency=2, max_read_size=256 * KIB), S3ClientConfig(max_read_size=64 * KIB)]
IDS = ["coalesced", "own-get"]


def many_tensors() -> dict[str, Any]:
    """24 tensors of 64-96 KiB (read in place), 24 of 400 bytes (copied), and a non-tensor."""
    g = torch.Generator().manual_seed(5)
    state: dict[str, Any] = {f"big{i}": torch.randn(16 * KIB + 1024 * (i % 9), generator=g) for i in range(24)}
    state.update({f"small{i}": torch.randn(100, generator=g) for i in range(24)})
    state["step"] = 3
    return state


def save(bucket: str, name: str, state: dict[str, Any], config: S3ClientConfig) -> str:
    path = f"s3://{bucket}/{name}"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config))
    return path


class RecordingPlanner(DefaultLoadPlanner):
    """Records, per planner call, which hook ran, for which item, on which thread and under which modes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, int, dict[str, Any]]] = []

    def _record(self, hook: str, item: ReadItem) -> None:
        modes = {
            "grad": torch.is_grad_enabled(),
            "inference": torch.is_inference_mode_enabled(),
            "autocast_cpu": torch.is_autocast_enabled("cpu"),
            "autocast_dtype": torch.get_autocast_dtype("cpu"),
        }
        self.calls.append((hook, item.dest_index.fqn, threading.get_ident(), modes))

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        self._record("resolve", read_item)
        return super().resolve_tensor(read_item)

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        self._record("commit", read_item)
        super().commit_tensor(read_item, tensor)

    def load_bytes(self, read_item: ReadItem, value: Any) -> None:
        self._record("bytes", read_item)
        super().load_bytes(read_item, value)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_load_under_inference_mode_into_inference_tensors(s3_env: Any, bucket: str, config: S3ClientConfig) -> None:
    state = many_tensors()
    path = save(bucket, "inference", state, config)
    with torch.inference_mode():
        loaded = blank_like(state)
        dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
    assert all(t.is_inference() for t in loaded.values() if isinstance(t, torch.Tensor))
    assert_same(state, loaded)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize(
    "mode",
    ["no_grad", "enable_grad", "inference", "autocast"],
)
def test_planner_hooks_run_with_the_callers_modes(s3_env: Any, bucket: str, config: S3ClientConfig, mode: str) -> None:
    state = many_tensors()
    path = save(bucket, f"modes-{mode}", state, config)
    contexts = {
        "no_grad": torch.no_grad,
        "enable_grad": torch.enable_grad,
        "inference": torch.inference_mode,
        "autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    }
    planner = RecordingPlanner()
    outer = torch.no_grad() if mode == "enable_grad" else torch.enable_grad()  # the opposite outside
    with outer, contexts[mode]():
        loaded = blank_like(state)
        expected = {
            "grad": torch.is_grad_enabled(),
            "inference": torch.is_inference_mode_enabled(),
            "autocast_cpu": torch.is_autocast_enabled("cpu"),
            "autocast_dtype": torch.get_autocast_dtype("cpu"),
        }
        dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config), planner=planner)
    assert_same(state, loaded)
    hooks = {hook for hook, _, _, _ in planner.calls}
    assert hooks == {"resolve", "commit", "bytes"}
    assert all(modes == expected for _, _, _, modes in planner.calls)
    assert {thread for _, _, thread, _ in planner.calls} == {threading.get_ident()}


@pytest.mark.parametrize("source", ["local", "s3"])
def test_tiered_load_runs_the_planner_on_the_callers_thread_and_modes(
    s3_env: Any, bucket: str, tmp_path: Path, source: str
) -> None:
    state = many_tensors()
    local, remote = tmp_path / "tier", f"s3://{bucket}/run"
    writer = TieredStorageWriter(local, remote, region=REGION, s3_every=1, background=False)
    dcp.save(state, checkpoint_id="step_1", storage_writer=writer)
    planner = RecordingPlanner()
    with torch.inference_mode():
        loaded = blank_like(state)
        reader = TieredStorageReader(tmp_path / ("tier" if source == "local" else "empty"), remote, region=REGION)
        dcp.load(loaded, checkpoint_id="step_1", storage_reader=reader, planner=planner)
    assert reader.source == source
    assert_same(state, loaded)
    assert all(modes["inference"] and not modes["grad"] for _, _, _, modes in planner.calls)
    assert {thread for _, _, thread, _ in planner.calls} == {threading.get_ident()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_destinations_are_filled_on_the_callers_device_and_stream(s3_env: Any, bucket: str) -> None:
    config = CONFIGS[0]
    state = many_tensors()
    path = save(bucket, "cuda", state, config)
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    seen: list[tuple[int, int]] = []

    class StreamPlanner(DefaultLoadPlanner):
        def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
            seen.append((torch.cuda.current_device(), torch.cuda.current_stream().stream_id))

    loaded = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in blank_like(state).items()}
    stream = torch.cuda.Stream(device)
    with torch.cuda.device(device), torch.cuda.stream(stream):
        dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config), planner=StreamPlanner())
        stream.synchronize()
    assert set(seen) == {(device.index, stream.stream_id)}
    assert_same(state, {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in loaded.items()})


class PairCountingPlanner(DefaultLoadPlanner):
    """Hands out a temporary per tensor (as a casting planner would), copies it over on commit,
    and counts the temporaries alive at once."""

    def __init__(self) -> None:
        super().__init__()
        self.open: dict[str, torch.Tensor] = {}
        self.most_open = 0
        self.calls: list[tuple[str, str]] = []

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        name = read_item.dest_index.fqn
        assert name not in self.open, f"{name} resolved twice"
        self.calls.append(("resolve", name))
        self.open[name] = torch.empty_like(super().resolve_tensor(read_item))
        self.most_open = max(self.most_open, len(self.open))
        return self.open[name]

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        name = read_item.dest_index.fqn
        self.calls.append(("commit", name))
        assert self.open.pop(name).data_ptr() == tensor.data_ptr(), f"{name} committed without its resolve"
        super().resolve_tensor(read_item).copy_(tensor)


@pytest.mark.parametrize("concurrency", [1, 3])
@pytest.mark.parametrize("read_size", [64 * KIB, 256 * KIB], ids=["own-get", "coalesced"])
def test_each_tensor_is_resolved_and_committed_as_a_pair(
    s3_env: Any, bucket: str, mocker: Any, concurrency: int, read_size: int
) -> None:
    """Only the tensors of the GETs in flight are open at once, each read in place into its temporary."""
    config = S3ClientConfig(max_concurrency=concurrency, max_read_size=read_size)
    state = many_tensors()
    path = save(bucket, "pairs", state, config)
    planner = PairCountingPlanner()
    loaded = blank_like(state)
    spy = mocker.spy(s3dcp._format.in_place, "destination_bytes")
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config), planner=planner)
    assert_same(state, loaded)
    assert spy.call_count == 24  # the big tensors still went in place
    assert not planner.open
    per_get = max(1, read_size // (64 * KIB))  # in-place tensors one GET can carry
    assert planner.most_open <= concurrency * per_get
    if concurrency == 1 and per_get == 1:
        assert planner.most_open == 1
    tensors = [name for name, value in state.items() if isinstance(value, torch.Tensor)]
    assert sorted(name for hook, name in planner.calls if hook == "resolve") == sorted(tensors)
    assert sorted(name for hook, name in planner.calls if hook == "commit") == sorted(tensors)
    for at, (hook, name) in enumerate(planner.calls):  # copied tensors: nothing in between
        if hook == "resolve" and name.startswith("small"):
            assert planner.calls[at + 1] == ("commit", name)
