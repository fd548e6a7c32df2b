"""Which rank reads each stored item several ranks need: balanced, deterministic, and only for shared items."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, ReadItem

from s3dcp._sharing import Member, Share, SharedReads, batches, plan_shares, schedule

MIB = 1 << 20


def stored(*sizes: int, path: str = "__0_0.distcp") -> dict[MetadataIndex, _StorageInfo]:
    """Items ``w0``, ``w1``, ... of the given sizes, laid end to end in one object."""
    records, offset = {}, 0
    for number, size in enumerate(sizes):
        records[MetadataIndex(f"w{number}", torch.Size([0]))] = _StorageInfo(path, offset, size)
        offset += size
    return records


def plan(*names: str) -> LoadPlan:
    return LoadPlan(
        [
            ReadItem(
                type=LoadItemType.TENSOR,
                dest_index=MetadataIndex(name, torch.Size([0])),
                dest_offsets=torch.Size([0]),
                storage_index=MetadataIndex(name, torch.Size([0])),
                storage_offsets=torch.Size([0]),
                lengths=torch.Size([1]),
            )
            for name in names
        ]
    )


def test_fully_replicated_items_are_each_read_once_and_evenly() -> None:
    records = stored(*[MIB] * 8)
    everything = [f"w{n}" for n in range(8)]
    shares = plan_shares([plan(*everything) for _ in range(4)], records)
    assert [share.stored.fqn for share in shares] == everything  # in stored order
    assert sorted(share.reader for share in shares) == [0, 0, 1, 1, 2, 2, 3, 3]
    for share in shares:
        assert share.receivers == tuple(rank for rank in range(4) if rank != share.reader)


def test_items_only_one_rank_needs_are_not_shared() -> None:
    records = stored(MIB, MIB, MIB, MIB)
    assert plan_shares([plan("w0"), plan("w1"), plan("w2"), plan("w3")], records) == []


def test_replica_groups_share_their_shards_between_the_ranks_that_hold_the_same_one() -> None:
    """HSDP-like: ranks 0 and 1 hold shards w0 and w1, and so do ranks 2 and 3."""
    records = stored(MIB, MIB)
    shares = plan_shares([plan("w0"), plan("w1"), plan("w0"), plan("w1")], records)
    assert shares == [
        Share(MetadataIndex("w0", torch.Size([0])), MIB, 0, (2,)),
        Share(MetadataIndex("w1", torch.Size([0])), MIB, 1, (3,)),
    ]


def test_bytes_a_rank_reads_for_itself_alone_count_toward_its_share() -> None:
    records = stored(8 * MIB, MIB, MIB)  # rank 0 alone needs the big w0
    shares = plan_shares([plan("w0", "w1", "w2"), plan("w1", "w2")], records)
    assert [share.reader for share in shares] == [1, 1]


def test_larger_items_are_placed_first_so_the_loads_come_out_even() -> None:
    records = stored(MIB, MIB, 2 * MIB)
    shares = plan_shares([plan("w0", "w1", "w2"), plan("w0", "w1", "w2")], records)
    by_reader = {0: 0, 1: 0}
    for share in shares:
        by_reader[share.reader] += share.size
    assert by_reader == {0: 2 * MIB, 1: 2 * MIB}


def test_every_rank_derives_the_same_schedule_whatever_order_its_items_come_in() -> None:
    records = stored(MIB, 3 * MIB, 2 * MIB)
    forward = plan_shares([plan("w0", "w1", "w2"), plan("w0", "w1", "w2")], records)
    backward = plan_shares([plan("w2", "w1", "w0"), plan("w2", "w0", "w1")], records)
    assert forward == backward


def test_an_item_the_checkpoint_does_not_record_is_named() -> None:
    with pytest.raises(KeyError, match="rank 1 reads 'nope'"):
        plan_shares([plan("w0"), plan("nope")], stored(MIB))


def test_each_reader_takes_runs_of_adjacent_items_so_no_get_spans_another_readers_bytes() -> None:
    sizes = [3 * MIB, MIB, MIB, 2 * MIB, MIB, 4 * MIB, MIB, MIB, 2 * MIB, MIB]  # 17 MiB
    records = stored(*sizes)
    everything = [f"w{n}" for n in range(len(sizes))]
    shares = plan_shares([plan(*everything) for _ in range(3)], records)
    readers = [share.reader for share in shares]
    runs = [reader for n, reader in enumerate(readers) if n == 0 or reader != readers[n - 1]]
    assert sorted(runs) == [0, 1, 2]  # one run each, in some order
    loads = [sum(share.size for share in shares if share.reader == rank) for rank in range(3)]
    assert max(loads) - min(loads) <= max(sizes)  # even to within one item


def test_a_rank_loaded_with_its_own_items_reads_fewer_shared_ones() -> None:
    records = stored(6 * MIB, *[MIB] * 6)  # w0: rank 0's alone; w1..w6 everyone's
    shared = [f"w{n}" for n in range(1, 7)]
    shares = plan_shares([plan("w0", *shared), plan(*shared), plan(*shared)], records)
    loads = [sum(share.size for share in shares if share.reader == rank) for rank in range(3)]
    assert loads == [0, 3 * MIB, 3 * MIB]


def shared_plans(*members: Member | None) -> list[LoadPlan]:
    """Every rank needs w0 and w1; each plan carries what its rank's prepare_local_plan put there."""
    return [dataclasses.replace(plan("w0", "w1"), storage_data=found) for found in members]


def test_the_coordinator_puts_the_same_schedule_in_every_plan() -> None:
    plans = schedule(shared_plans(Member(0, 3), Member(1, 3), Member(2, 3)), stored(MIB, MIB))
    schedules = [found.storage_data for found in plans]
    assert all(isinstance(found, SharedReads) for found in schedules)
    assert schedules[0] == schedules[1] == schedules[2]
    assert [share.stored.fqn for share in schedules[0].shares] == ["w0", "w1"]
    assert [found.items for found in plans] == [p.items for p in shared_plans(None, None, None)]


def test_no_schedule_without_collectives_or_with_sharing_off() -> None:
    alone = shared_plans(Member(1, 4))  # no_dist: each rank plans for itself alone
    assert schedule(alone, stored(MIB, MIB)) == alone
    off = shared_plans(Member(0, 2), None)  # a rank whose reader has share_reads=False
    assert schedule(off, stored(MIB, MIB)) == off


def test_plans_from_another_process_group_turn_sharing_off_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """DCP loads on a subgroup {2, 3} while the readers were told of the default group of 4."""
    plans = schedule(shared_plans(Member(2, 4), Member(3, 4)), stored(MIB, MIB))
    assert [found.storage_data for found in plans] == [None, None]
    assert "S3StorageReader(process_group=...)" in caplog.text


def test_batches_keep_order_and_stay_within_the_budget_but_for_a_larger_item() -> None:
    def share(n: int, size: int) -> Share:
        return Share(MetadataIndex(f"w{n}", torch.Size([0])), size, 0, (1,))

    shares = [share(0, 3), share(1, 3), share(2, 9), share(3, 1), share(4, 2), share(5, 2)]
    assert [[s.size for s in batch] for batch in batches(shares, 6)] == [[3, 3], [9], [1, 2, 2]]
    assert list(batches([], 6)) == []


def test_shared_items_go_to_the_host_with_less_to_read_first() -> None:
    """Ranks 0 and 1 share host a, ranks 2 and 3 host b; host a already reads 6 MiB for rank 0 alone."""
    records = stored(6 * MIB, *[MIB] * 6)  # w0: rank 0's alone; w1..w6 everyone's
    shared = [f"w{n}" for n in range(1, 7)]
    plans = [plan("w0", *shared), plan(*shared), plan(*shared), plan(*shared)]
    readers = [share.reader for share in plan_shares(plans, records, ["a", "a", "b", "b"])]
    assert sorted(readers) == [2, 2, 2, 3, 3, 3]  # host b's link carries the shared 6 MiB, host a's its own 6
    by_rank = [share.reader for share in plan_shares(plans, records)]  # hosts unknown: ranks alone
    assert sorted(by_rank) == [1, 1, 2, 2, 3, 3]
