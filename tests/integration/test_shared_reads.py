"""Shared reads on real gloo groups through a counting proxy: each stored byte leaves S3 about once.

Each test saves a checkpoint, loads it on several spawned ranks whose S3
requests all pass through the proxy, and checks two things: every rank's
tensors are bit-exact, and the bytes S3 served for the checkpoint's data
objects are about the stored size (or, with sharing off, once per rank).
Layouts other than full replicas (HSDP, resharding, subgroups) are in
``test_shared_reads_layouts.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import ReadItem

from s3dcp import AccessDeniedError, S3StorageReader
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION
from tests.distributed import run_ranks
from tests.helpers import HAS_STREAM_TRANSFORMS, aws_env, needs_stream_transforms, s3dcp_error
from tests.sharing import SHARE_BOUND, assert_same, blank, data_bytes_served, model_state, save_replicated

if HAS_STREAM_TRANSFORMS:
    from torch.distributed.checkpoint._extension import ZStandard

pytestmark = [pytest.mark.s3, pytest.mark.ranks]


# -- fully replicated (DDP) -------------------------------------------------------
def load_replicated(rank: int, world_size: int, uri: str, share_reads: bool) -> None:
    expected = model_state()
    state = blank(expected)
    dcp.load(state, storage_reader=S3StorageReader(REGION, uri, share_reads=share_reads))
    assert_same(state, expected, rank)


@pytest.mark.parametrize(("share_reads", "times"), [(True, 1), (False, 4)])
def test_four_replicas_read_each_stored_byte_once_and_load_bit_exact(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str, share_reads: bool, times: int
) -> None:
    uri, stored = save_replicated(s3, proxy, bucket, "replicated")
    run_ranks(4, load_replicated, uri, share_reads, env=aws_env())
    served = data_bytes_served(proxy, "replicated")
    if share_reads:
        assert stored <= served <= SHARE_BOUND * stored, (served, stored)
    else:
        assert served >= times * stored, (served, stored)


def load_counting_copies(rank: int, world_size: int, uri: str) -> None:
    """Load with sharing; record which items each rank copied out of a buffer rather than received in place."""
    import s3dcp._sharing as sharing

    copied: list[str] = []

    def counting(original: Any) -> Any:
        def wrapper(item: ReadItem, *args: Any, **kwargs: Any) -> Any:
            copied.append(item.dest_index.fqn)
            return original(item, *args, **kwargs)

        return wrapper

    sharing.deliver_item = counting(sharing.deliver_item)  # type: ignore[assignment]
    sharing.parse_item = counting(sharing.parse_item)  # type: ignore[assignment]
    expected = model_state()
    state = blank(expected)
    dcp.load(state, storage_reader=S3StorageReader(REGION, uri))
    assert_same(state, expected, rank)
    everyone: list[Any] = [None] * world_size
    dist.all_gather_object(everyone, copied)
    times = {name: sum(name in ranks for ranks in everyone) for name in ["embedding", "counts", "extra.step"]}
    times.update({f"layer{n}.weight": sum(f"layer{n}.weight" in ranks for ranks in everyone) for n in range(8)})
    # tensors of 64 KiB or more: copied by their reader only, received straight into their memory elsewhere
    assert all(times[name] == 1 for name in times if name.startswith("layer") or name == "embedding"), times
    # a small tensor and plain values: copied out of the received bytes on every rank
    assert times["counts"] == world_size and times["extra.step"] == world_size, times


def test_received_tensors_go_straight_into_their_memory(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """As an in-place read from S3 would: no buffer and no copy on the ranks that receive a large tensor."""
    uri, _ = save_replicated(s3, proxy, bucket, "direct")
    run_ranks(3, load_counting_copies, uri, env=aws_env())


@needs_stream_transforms
def test_compressed_items_are_shared_decoded_and_land_bit_exact(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """Items saved through ZStandard: the reader checks and decodes them once, the others get the tensors."""
    uri, stored = save_replicated(s3, proxy, bucket, "zstd", extensions=[ZStandard()])
    run_ranks(3, load_replicated, uri, True, env=aws_env())
    assert stored <= data_bytes_served(proxy, "zstd") <= SHARE_BOUND * stored


# -- a custom planner --------------------------------------------------------------
class CountingPlanner(DefaultLoadPlanner):
    """A planner that counts what it is handed: each item must reach it exactly once."""

    def __init__(self) -> None:
        super().__init__()
        self.committed: list[str] = []
        self.loaded: list[str] = []

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        self.committed.append(read_item.dest_index.fqn)
        super().commit_tensor(read_item, tensor)

    def load_bytes(self, read_item: ReadItem, value: Any) -> None:
        self.loaded.append(read_item.dest_index.fqn)
        super().load_bytes(read_item, value)


def load_with_planner(rank: int, world_size: int, uri: str) -> None:
    expected = model_state()
    state = blank(expected)
    planner = CountingPlanner()
    dcp.load(state, storage_reader=S3StorageReader(REGION, uri), planner=planner)
    assert_same(state, expected, rank)
    tensors = sorted(name for name, value in expected.items() if torch.is_tensor(value))
    assert sorted(planner.committed) == tensors
    assert sorted(planner.loaded) == ["extra.note", "extra.step"]  # DCP flattens the nested dict


def test_a_custom_planner_gets_every_item_once(proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str) -> None:
    uri, stored = save_replicated(s3, proxy, bucket, "planner")
    run_ranks(3, load_with_planner, uri, env=aws_env())
    assert stored <= data_bytes_served(proxy, "planner") <= SHARE_BOUND * stored


# -- a failing shared read -----------------------------------------------------------
def load_expecting_failure(rank: int, world_size: int, uri: str) -> None:
    state = blank(model_state())
    with pytest.raises(BaseException) as raised:  # DCP's CheckpointException is a BaseException
        dcp.load(state, storage_reader=S3StorageReader(REGION, uri))
    assert isinstance(s3dcp_error(raised.value), AccessDeniedError)  # the cause, whichever rank met it
    own = s3dcp_error(raised.value.failures[rank][0])  # DCP gathers every rank's error, by rank
    kinds: list[Any] = [None] * world_size
    dist.all_gather_object(kinds, (type(own).__name__, str(own)))
    denied = [other for other, (kind, _) in enumerate(kinds) if kind == "AccessDeniedError"]
    assert len(denied) == 1, kinds  # the one rank whose GET was refused
    for other, (kind, message) in enumerate(kinds):
        if other != denied[0]:
            assert kind == "SharedReadError" and f"rank {denied[0]} failed" in message, kinds
            assert "AccessDenied" in message and "share_reads=False" in message, message


def test_a_failed_shared_read_fails_every_rank_with_a_clear_error_instead_of_hanging(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """The first GET of the data object is refused (403): its rank raises that; the others, who needed
    its items, raise SharedReadError naming it, rather than wait in the exchange until the group times out."""
    uri, _ = save_replicated(s3, proxy, bucket, "failing")
    proxy.add_rule("access_denied", method="GET", key_pattern=r"/failing/__0_0\.distcp$", count=1)
    run_ranks(3, load_expecting_failure, uri, env=aws_env())


def load_without_collectives(rank: int, world_size: int, uri: str) -> None:
    expected = model_state()
    state = blank(expected)
    if rank == 0:  # only one rank loads: anything collective would wait for the others forever
        dcp.load(state, storage_reader=S3StorageReader(REGION, uri), no_dist=True)
        assert_same(state, expected, rank)


def test_a_load_without_collectives_reads_alone(proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str) -> None:
    uri, stored = save_replicated(s3, proxy, bucket, "alone")
    run_ranks(2, load_without_collectives, uri, env=aws_env())
    assert data_bytes_served(proxy, "alone") == stored


def pickle_with_a_group(rank: int, world_size: int, uri: str) -> None:
    import pickle

    pickle.loads(pickle.dumps(S3StorageReader(REGION, uri)))  # the default group: pickles as before
    with pytest.raises(TypeError, match="process_group= does not pickle"):
        pickle.dumps(S3StorageReader(REGION, uri, process_group=dist.new_group([0, 1])))


def test_a_reader_given_a_process_group_refuses_to_pickle_saying_why(s3_env: Any, bucket: str) -> None:
    run_ranks(2, pickle_with_a_group, f"s3://{bucket}/unused", env=aws_env())
